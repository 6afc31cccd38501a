"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020): FGSM plus λ·(1 − cos(∇x ℓ(x), ∇x ℓ(x + η))).

Follows the authors' `train.py` (tml-epfl/understanding-fast-adv-training):
FGSM from the image (their GradAlign runs use `--attack_init zero`), whose
input gradient at x is reused, detached, as the first gradient; the second is
taken at x + η, η ~ U(-ε, ε)ᵈ (not clipped to [0, 1], as theirs), through
double backpropagation; images with a zero gradient are left out of the mean.
"""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.attacks.eot import cross_entropy_sum, input_gradient
from keras_pnil.methods import base
from keras_pnil.methods.fgsm import fgsm_step
from keras_pnil.methods.registry import GRADIENT_COST, STEP_COST, MethodSpec, Option, positive, register
from keras_pnil.validation import check_positive

# The authors' CIFAR-10 values grow with ε, from 0.027 at 1/255 to 2.0 at 16/255 (`sh/exps_diff_eps_cifar10.sh`);
# the paper gives none for MNIST. Their log-linear rule would give ~10⁷ at ε = 0.3, where the bounded cosine term
# (in [0, 2]) would swamp the cross-entropy: we take their largest, 2.0, the value of their largest ε.
DEFAULT_LAMBDA = 2.0


def gradient_misalignment(g1, g2):
    """1 − the mean cosine between each image's g1 and g2, over the images where neither is zero (0 if none)."""
    g1, g2 = (tf.reshape(tf.cast(g, tf.float32), [tf.shape(g)[0], -1]) for g in (g1, g2))
    sq1, sq2 = tf.reduce_sum(g1 * g1, 1), tf.reduce_sum(g2 * g2, 1)
    valid = (sq1 > 0) & (sq2 > 0)
    # Norms of masked-out images are replaced before the square root, whose gradient at 0 is infinite.
    norms = tf.sqrt(tf.where(valid, sq1, 1.0)) * tf.sqrt(tf.where(valid, sq2, 1.0))
    cosines = tf.where(valid, tf.reduce_sum(g1 * g2, 1) / norms, 0.0)
    count = tf.reduce_sum(tf.cast(valid, tf.float32))
    return tf.where(count > 0, 1.0 - tf.math.divide_no_nan(tf.reduce_sum(cosines), count), 0.0)


class GradAlign(base.Method):
    """FGSM training with GradAlign's gradient-alignment term (Andriushchenko & Flammarion).

    loss = CE(f(x_fgsm), y) + λ·(1 − E cos(∇x ℓ(x), ∇x ℓ(x + η))), η ~ U(-ε, ε)ᵈ.
    The cosine is differentiated for the weights through ∇x ℓ(x + η) (double
    backpropagation); ∇x ℓ(x) is FGSM's own gradient, detached, as in the
    authors' code. The term is logged as `gradalign` (1 − cos, before λ).

    Args:
        epsilon: L∞ radius.
        lam: λ (default 2.0; see `DEFAULT_LAMBDA` for why, on MNIST).

    L∞ only: `norm="l2"` is refused. The paper defines and tunes GradAlign
    for the L∞ ball alone: η is drawn from the L∞ cube, and λ is set per L∞
    radius (0.027 at 1/255 to 2.0 at 16/255); an L2 version would need an L2
    noise and a λ schedule over L2 radii that nobody has calibrated, and a
    guessed λ either does nothing or swamps the cross-entropy. For L2 training
    use rfgsm, nfgsm, pgd or trades.

    Example:
        >>> trainer = kp.adversarial(model, "gradalign", 0.3, lam=2.0)  # doctest: +SKIP
        >>> trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # doctest: +SKIP
        >>> trainer.fit(x, y)  # logs loss and gradalign  # doctest: +SKIP
    """

    name = "gradalign"
    penalties = ("gradalign",)
    linf_only = "its noise and its λ are defined and tuned for the L∞ ball only (Andriushchenko & Flammarion)"

    def __init__(self, epsilon: float, lam: float = DEFAULT_LAMBDA, norm: str = "linf"):
        super().__init__(epsilon, norm)  # refuses any other norm
        self.lam = check_positive("lam", lam)

    def prepare(self, model_fn, x, y) -> base.Batch:
        gradient = tf.stop_gradient(input_gradient(model_fn, x, y))
        return base.Batch(fgsm_step(model_fn, x, y, self.epsilon, gradient), context=gradient)

    def __call__(self, model_fn, x, y):
        return self.prepare(model_fn, x, y).inputs

    def penalty(self, model_fn, x, batch, y, y_pred):
        noisy = x + base.uniform(x, self.epsilon)
        with tf.GradientTape() as tape:  # nested in Keras' tape: its gradient is differentiated again
            tape.watch(noisy)
            loss = cross_entropy_sum(y, model_fn(noisy))
        return {"gradalign": base.Penalty(self.lam, gradient_misalignment(batch.context, tape.gradient(loss, noisy)))}


register(MethodSpec(
    "gradalign", GradAlign,
    (Option("gradalign_lambda", DEFAULT_LAMBDA, positive,
            "GradAlign's λ (default 2.0: the authors' largest, for CIFAR-10 at 16/255; the paper has no MNIST "
            "value)", keyword="lam"),),
    # FGSM's gradient, Keras' step, and ∇x ℓ(x + η) differentiated again (about three gradients' worth).
    cost=lambda o: STEP_COST + GRADIENT_COST + 3 * GRADIENT_COST,
    about="FGSM + GradAlign's gradient-alignment term (Andriushchenko & Flammarion)"))
