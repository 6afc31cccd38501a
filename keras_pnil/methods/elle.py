"""ELLE (Abad Rocamora et al., ICLR 2024): FGSM plus λ·E[(ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))²].

Follows the authors' `core/utils/train.py` (LIONS-EPFL/ELLE): x_a, x_b drawn
uniformly from the ε-ball (not clipped to [0, 1], as theirs), α ~ U(0, 1) per
image, x_c = (1−α)x_a + αx_b; the three points in one forward pass, no double
backpropagation; the error is the mean square over the batch. Their ELLE runs
train on FGSM from the image (one step of ε), as here. The adaptive-λ variant
(ELLE-A) is not implemented.
"""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.attacks.common import per_image
from keras_pnil.methods import base
from keras_pnil.methods.fgsm import fgsm_step
from keras_pnil.methods.registry import GRADIENT_COST, STEP_COST, MethodSpec, Option, positive, register
from keras_pnil.validation import check_positive

# The authors' CIFAR-10 λ grows with ε: 1,000 up to 8/255, 5,000 to 20/255, 10,000 at 22-26/255
# (`scripts/run_elle_cifar10.sh`); the paper gives none for MNIST. ε = 0.3 (≈ 77/255) lies beyond their largest,
# so we take the value of their largest ε.
DEFAULT_LAMBDA = 10000.0


def linearity_error(model_fn, y, x_a, x_b, alpha):
    """Mean over the batch of (ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))², x_c = (1−α)x_a + αx_b, α per image."""
    weight = per_image(tf.cast(alpha, x_a.dtype), x_a)
    x_c = (1.0 - weight) * x_a + weight * x_b
    losses = base.per_example_cross_entropy(tf.tile(tf.reshape(y, [-1]), [3]),
                                            model_fn(tf.concat([x_a, x_b, x_c], 0)))
    loss_a, loss_b, loss_c = tf.split(losses, 3)
    alpha = tf.cast(alpha, tf.float32)
    return tf.reduce_mean(tf.square(loss_c - ((1.0 - alpha) * loss_a + alpha * loss_b)))


class ELLE(base.Method):
    """FGSM training with ELLE's local-linearity term (Abad Rocamora et al.).

    loss = CE(f(x_fgsm), y) + λ·E[(ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))²] over a
    random triple per image (see the module). Logged as `elle` (before λ).

    Args:
        epsilon: L∞ radius.
        lam: λ (default 10,000; see `DEFAULT_LAMBDA` for why, on MNIST).

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

    def __init__(self, epsilon: float, lam: float = DEFAULT_LAMBDA, norm: str = "linf"):
        super().__init__(epsilon, norm)  # refuses any other norm
        self.lam = check_positive("lam", lam)

    def __call__(self, model_fn, x, y):
        return fgsm_step(model_fn, x, y, self.epsilon)

    def penalty(self, model_fn, x, batch, y, y_pred):
        x_a, x_b = x + base.uniform(x, self.epsilon), x + base.uniform(x, self.epsilon)
        alpha = 0.5 + base.uniform(tf.zeros(tf.shape(x)[:1], x.dtype), 0.5)  # U(0, 1), one per image
        return {"elle": base.Penalty(self.lam, linearity_error(model_fn, y, x_a, x_b, alpha))}


register(MethodSpec(
    "elle", ELLE,
    (Option("elle_lambda", DEFAULT_LAMBDA, positive,
            "ELLE's λ (default 10000: the authors' for CIFAR-10 at their largest ε, 22-26/255; the paper has no "
            "MNIST value)", keyword="lam"),),
    cost=lambda o: STEP_COST + GRADIENT_COST + 3 * GRADIENT_COST,  # FGSM, Keras' step, three more points
    about="FGSM + ELLE's local-linearity term (Abad Rocamora et al.)"))
