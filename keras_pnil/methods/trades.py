"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x′)), x′ from PGD on that KL.

Follows the authors' `trades.py` and `train_trades_mnist.py` (yaodongyu/TRADES):
x′ starts at x + 0.001·N(0, 1) and takes sign steps up KL(f(x) ‖ f(x′)), each
projected to the ε-ball and [0, 1] (the PGD attack's own loop); the KL is
summed over classes and averaged over the batch, and is differentiated through
both f(x) and f(x′). Their MNIST script: β = 1, 40 steps of 0.01 at ε = 0.3.

In L2 (`norm="l2"`) it follows their `trades_loss(distance='l_2')`: the same
start, steps of (2ε/steps)·∇/‖∇‖₂ (their SGD on δ with lr 2ε/steps and the
gradient renormalised per image), each followed by the box and the ε L2 ball
(they clamp to [0, 1] and then renormalise δ, which may leave the box; here
the exact projection onto the ball ∩ box, the PGD attack's).

One departure: their code attacks the model in eval mode, we in training mode,
as every method here does (the attack sees the network that is trained). For
networks without batch norm or dropout (the MNIST networks here) the only
difference is a PNIL's noise, which the KL term then sees too.
"""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.attacks.pgd import default_step_size, signed_ascent
from keras_pnil.methods import base
from keras_pnil.methods.registry import (
    GRADIENT_COST,
    STEP_COST,
    MethodSpec,
    Option,
    count,
    optional_positive,
    positive,
    register,
)
from keras_pnil.validation import check_count, check_positive

START_SCALE = 0.001  # the authors' random start: x + 0.001·N(0, 1)


def kl_divergence(p_logits, q_logits):
    """Per-example KL(softmax(p_logits) ‖ softmax(q_logits)), in float32."""
    p_log, q_log = (tf.nn.log_softmax(tf.cast(z, tf.float32)) for z in (p_logits, q_logits))
    return tf.reduce_sum(tf.exp(p_log) * (p_log - q_log), axis=-1)


def kl_gradient(model_fn, clean_logits):
    """`adv -> (∇adv of Σ KL(f(x) ‖ f(adv)), all-True)`: the `gradient` of `signed_ascent`."""
    target = tf.stop_gradient(clean_logits)

    def gradient(adv):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            loss = tf.reduce_sum(kl_divergence(target, model_fn(adv)))
        return tf.stop_gradient(tape.gradient(loss, adv)), tf.ones(tf.shape(adv)[:1], tf.bool)

    return gradient


class TRADES(base.Method):
    """TRADES: trains on the clean images with β·KL(f(x) ‖ f(x′)) added (Zhang et al.).

    Keras' own step computes CE(f(x), y) on the clean batch, so its accuracy
    metrics are clean ones; the KL term is logged as `trades_kl` (before β).

    Args:
        epsilon: The radius (L∞, or L2 with `norm="l2"`).
        beta: β (the authors' MNIST value, 1.0; CIFAR-10: 6.0).
        steps: Steps of the KL attack (the authors' MNIST script: 40).
        step_size: Its step (default: the PGD attack's 2ε/steps; the authors' MNIST script: 0.01 at ε = 0.3).
        norm: "linf" (sign steps) or "l2" (normalised-gradient steps, the authors' `distance='l_2'`).

    Example:
        >>> trainer = kp.adversarial(model, "trades", 0.3, beta=1.0, steps=10)  # doctest: +SKIP
    """

    name = "trades"
    penalties = ("trades_kl",)
    norms = ("linf", "l2")

    def __init__(self, epsilon: float, beta: float = 1.0, steps: int = 40, step_size: float | None = None,
                 norm: str = "linf"):
        super().__init__(epsilon, norm)
        self.beta = check_positive("beta", beta)
        self.steps = check_count("steps", steps)
        self.step_size = (default_step_size(self.epsilon, self.steps) if step_size is None
                          else check_positive("step_size", step_size))

    def adversary(self, model_fn, x):
        """x′: PGD on KL(f(x) ‖ f(x′)) from x + 0.001·N(0, 1)."""
        start = x + base.gaussian(x, START_SCALE)
        return tf.stop_gradient(signed_ascent(kl_gradient(model_fn, model_fn(x)), x, start, self.epsilon,
                                              self.steps, self.step_size, unroll=True, threat=self.threat))

    def prepare(self, model_fn, x, y) -> base.Batch:
        return base.Batch(x, context=self.adversary(model_fn, x))

    def __call__(self, model_fn, x, y):
        return x

    def penalty(self, model_fn, x, batch, y, y_pred):
        kl = tf.reduce_mean(kl_divergence(y_pred, model_fn(batch.context)))
        return {"trades_kl": base.Penalty(self.beta, kl)}


register(MethodSpec(
    "trades", TRADES,
    (Option("trades_beta", 1.0, positive, "TRADES's β (default 1: the authors' MNIST value; CIFAR-10: 6)",
            keyword="beta"),
     Option("trades_steps", 40, count, "TRADES's KL-attack steps (default 40: the authors' MNIST script)",
            keyword="steps"),
     Option("trades_step_size", None, optional_positive,
            "TRADES's KL-attack step (default 2ε/steps, the PGD attack's; the authors' MNIST script: 0.01)",
            keyword="step_size")),
    # f(x) for the target, the attack's steps, Keras' step on x, and f(x′) with its backward pass.
    cost=lambda o: 1 + GRADIENT_COST * o["trades_steps"] + STEP_COST + GRADIENT_COST,
    about="TRADES: clean cross-entropy + β·KL to a KL-PGD point (Zhang et al.)"))
