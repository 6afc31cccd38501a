"""ELLE (Abad Rocamora et al., ICLR 2024): FGSM plus λ·E[(ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))²].

Follows the authors' `core/utils/train.py` (LIONS-EPFL/ELLE): x_a, x_b drawn
uniformly from the ε-ball (not clipped to [0, 1], as theirs), α ~ U(0, 1) per
image, x_c = (1−α)x_a + αx_b; the three points in one forward pass, no double
backpropagation; the error is the mean square over the batch. Their ELLE runs
train on FGSM from the image (one step of ε), as here.

ELLE-A, the adaptive variant (`adaptive=True`, `--elle-adaptive`), follows the
authors' `lambda_schedule='onoff'` (`core/utils/train.py`): λ starts at 0;
after each training step whose linearity error exceeds the mean plus
`SENSITIVITY` standard deviations of every earlier step's error (once there
are more than 2), λ is set to its maximum (`lam`), else it shrinks by `DECAY`.
The error is computed every step either way, so ELLE-A costs what ELLE costs.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_pnil.attacks.common import per_image
from keras_pnil.methods import base
from keras_pnil.methods.fgsm import fgsm_step
from keras_pnil.methods.registry import GRADIENT_COST, STEP_COST, MethodSpec, Option, positive, register, switch
from keras_pnil.validation import check_positive

# The authors' CIFAR-10 λ grows with ε: 1,000 up to 8/255, 5,000 to 20/255, 10,000 at 22-26/255
# (`scripts/run_elle_cifar10.sh`); the paper gives none for MNIST. ε = 0.3 (≈ 77/255) lies beyond their largest,
# so we take the value of their largest ε.
DEFAULT_LAMBDA = 10000.0
SENSITIVITY, DECAY = 2.0, 0.99  # ELLE-A's rule: the authors' defaults (`parser.py`: sensitivity, decay_rate)


def linearity_error(model_fn, y, x_a, x_b, alpha):
    """Mean over the batch of (ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))², x_c = (1−α)x_a + αx_b, α per image."""
    weight = per_image(tf.cast(alpha, x_a.dtype), x_a)
    x_c = (1.0 - weight) * x_a + weight * x_b
    losses = base.per_example_cross_entropy(tf.tile(tf.reshape(y, [-1]), [3]),
                                            model_fn(tf.concat([x_a, x_b, x_c], 0)))
    loss_a, loss_b, loss_c = tf.split(losses, 3)
    alpha = tf.cast(alpha, tf.float32)
    return tf.reduce_mean(tf.square(loss_c - ((1.0 - alpha) * loss_a + alpha * loss_b)))


class AdaptiveLambda:
    """ELLE-A's λ: 0 at first; after a step whose error is a spike against all earlier steps' (more than
    `SENSITIVITY` population standard deviations above their mean, once there are more than 2), `maximum`;
    else the previous λ times `DECAY`.

    Its state is Keras variables (`variables`), which the trainer tracks, so a resumed run carries on with
    the history it had. Under a tf.distribute strategy the first replica's error decides.

    Example:
        >>> rule = AdaptiveLambda(100.0)
        >>> [float(rule.step(tf.constant(e))) for e in (1.0, 1.0, 1.0, 9.0, 1.0)]
        [0.0, 0.0, 0.0, 0.0, 100.0]
    """

    def __init__(self, maximum: float):
        self.maximum = check_positive("lam", maximum)
        self.variables = [keras.Variable(0.0, trainable=False, aggregation="only_first_replica", name=name)
                          for name in ("elle_lambda", "elle_steps", "elle_error_sum", "elle_error_sum_sq")]

    def step(self, error):
        """This step's λ (set by the steps before it); then `error` joins the history and sets the next λ."""
        lam, steps, total, total_sq = self.variables
        now = tf.identity(lam.value)
        error = tf.cast(tf.stop_gradient(error), tf.float32)
        n = tf.maximum(steps.value, 1.0)
        mean = total.value / n
        std = tf.sqrt(tf.maximum(total_sq.value / n - mean * mean, 0.0))
        spike = (steps.value > 2.0) & (error > mean + SENSITIVITY * std)
        lam.assign(tf.where(spike, self.maximum, now * DECAY))
        steps.assign_add(1.0)
        total.assign_add(error)
        total_sq.assign_add(error * error)
        return now


class ELLE(base.Method):
    """FGSM training with ELLE's local-linearity term (Abad Rocamora et al.).

    loss = CE(f(x_fgsm), y) + λ·E[(ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))²] over a
    random triple per image (see the module). Logged as `elle` (before λ).

    Args:
        epsilon: L∞ radius.
        lam: λ (default 10,000; see `DEFAULT_LAMBDA` for why, on MNIST); ELLE-A's largest λ.
        adaptive: ELLE-A: λ switched on at spikes of the error and decayed between them (`AdaptiveLambda`).

    L∞ only: `norm="l2"` is refused. ELLE draws its triples from the L∞
    ball, trains on FGSM's sign step, and its λ (1,000 to 10,000) is set per
    L∞ radius: the paper has no L2 experiment, and the size of the linearity
    error, hence λ, changes with the ball. For L2 training use rfgsm, nfgsm,
    pgd or trades.

    Example:
        >>> trainer = kp.adversarial(model, "elle", 0.3, lam=10000.0)  # doctest: +SKIP
    """

    name = "elle"
    penalties = ("elle",)
    linf_only = "its triples, its FGSM step and its λ are defined and tuned for the L∞ ball only (Abad Rocamora et al.)"

    def __init__(self, epsilon: float, lam: float = DEFAULT_LAMBDA, norm: str = "linf", adaptive: bool = False):
        super().__init__(epsilon, norm)  # refuses any other norm
        self.lam = check_positive("lam", lam)
        self.adaptive = AdaptiveLambda(self.lam) if switch("adaptive", adaptive) else None

    @property
    def variables(self) -> list:
        return self.adaptive.variables if self.adaptive else []

    def __call__(self, model_fn, x, y):
        return fgsm_step(model_fn, x, y, self.epsilon)

    def penalty(self, model_fn, x, batch, y, y_pred):
        x_a, x_b = x + base.uniform(x, self.epsilon), x + base.uniform(x, self.epsilon)
        alpha = 0.5 + base.uniform(tf.zeros(tf.shape(x)[:1], x.dtype), 0.5)  # U(0, 1), one per image
        return {"elle": base.Penalty(self.lam, linearity_error(model_fn, y, x_a, x_b, alpha))}

    def observe(self, terms: dict) -> dict:
        if self.adaptive is None:
            return terms
        term = terms["elle"]
        return {**terms, "elle": base.Penalty(self.adaptive.step(term.value), term.value)}


register(MethodSpec(
    "elle", ELLE,
    (Option("elle_lambda", DEFAULT_LAMBDA, positive,
            "ELLE's λ (default 10000: the authors' for CIFAR-10 at their largest ε, 22-26/255; the paper has no "
            "MNIST value)", keyword="lam"),
     Option("elle_adaptive", False, switch,
            "ELLE-A: lambda 0 at first, set to --elle-lambda after a spike of the linearity error (above its mean "
            "+ 2 std so far), else decayed by 0.99 a step (the authors' rule)", keyword="adaptive")),
    cost=lambda o: STEP_COST + GRADIENT_COST + 3 * GRADIENT_COST,  # FGSM, Keras' step, three more points
    about="FGSM + ELLE's local-linearity term (Abad Rocamora et al.)"))
