"""PGD training (Madry et al.), L∞ or L2, with Wong et al.'s per-image early stop: the PGD attack's own loop."""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.attacks.eot import cross_entropy_sum
from keras_pnil.attacks.pgd import default_step_size, loss_gradient, signed_ascent
from keras_pnil.methods import base
from keras_pnil.methods.registry import GRADIENT_COST, STEP_COST, MethodSpec, Option, count, register, switch
from keras_pnil.validation import check_count, check_positive


class PGD(base.Method):
    """k-step PGD with a random start (Madry et al.): the expensive baseline.

    The steps are the PGD attack's (`keras_pnil.attacks.pgd.signed_ascent`),
    and so is the default step (2ε/steps): training and evaluation mean the
    same thing by "PGD-k". With `early_stop`, a step moves only the images the
    model still classifies right, as Wong et al.'s MNIST PGD training does
    (`MNIST/train_mnist.py`): early in training almost every image is already
    wrong, and the full attack keeps the model at chance.

    L∞: start x + U(-ε, ε) clipped to [0, 1]; steps of α·sign(∇), each
    clipped to the ε-ball and [0, 1]. L2 (`norm="l2"`, Madry et al.'s L2
    PGD): start x + u, u uniform in the ε L2 ball (`base.uniform_ball`),
    clipped to [0, 1] (which keeps it in the ball); steps of α·∇/‖∇‖₂, each
    followed by the exact projection onto the L2 ball ∩ [0, 1] box: the
    attack's L2 step and projection, not a copy.

    Example:
        >>> trainer = kp.adversarial(model, "pgd", 0.3, steps=10, early_stop=True)  # doctest: +SKIP
        >>> trainer = kp.adversarial(model, "pgd", 2.0, norm="l2", steps=10)  # doctest: +SKIP
    """

    name = "pgd"
    norms = ("linf", "l2")

    def __init__(self, epsilon: float, steps: int = 7, step_size: float | None = None, early_stop: bool = False,
                 norm: str = "linf"):
        super().__init__(epsilon, norm)
        self.steps = check_count("steps", steps)
        self.step_size = (default_step_size(self.epsilon, self.steps) if step_size is None
                          else check_positive("step_size", step_size))
        self.early_stop = bool(early_stop)

    def __call__(self, model_fn, x, y):
        start = tf.clip_by_value(x + base.uniform_ball(x, self.epsilon, self.norm), 0.0, 1.0)
        return signed_ascent(loss_gradient(model_fn, cross_entropy_sum, y), x, start, self.epsilon, self.steps,
                             self.step_size, early_stop=self.early_stop, unroll=True, threat=self.threat)


register(MethodSpec(
    "pgd", PGD,
    (Option("pgd_steps", 7, count, "PGD training steps (default 7)", keyword="steps"),
     Option("pgd_early_stop", False, switch, "PGD training: step only the images still classified right "
                                             "(Wong et al.'s MNIST PGD)", keyword="early_stop")),
    cost=lambda o: STEP_COST + GRADIENT_COST * o["pgd_steps"],
    about="PGD from a random start (Madry et al.), the PGD attack's steps"))
