"""FGSM from a random start (FGSM-RS, Wong et al., "Fast is better than free", `MNIST/train_mnist.py`)."""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.methods import base
from keras_pnil.methods.registry import MethodSpec, Option, optional_positive, positive, register
from keras_pnil.validation import check_positive


class RFGSM(base.Method):
    """FGSM from a random start, projected back (Wong et al.'s FGSM-RS, "Fast is better than free").

    u ~ U(-ε, ε); the gradient is taken at x + u as it is (not clipped to
    [0, 1]); δ = clip(u + α·sign(∇), -ε, ε); train on clip(x + δ, 0, 1):
    Wong et al.'s `MNIST/train_mnist.py` step for step. The paper uses
    α = 1.2ε; Wong et al. 1.25ε.

    Example:
        >>> trainer = kp.adversarial(model, "rfgsm", 0.3, alpha=0.375)  # doctest: +SKIP
    """

    name = "rfgsm"

    def __init__(self, epsilon: float, alpha: float | None = None):
        super().__init__(epsilon)
        self.alpha = 1.2 * self.epsilon if alpha is None else check_positive("alpha", alpha)

    def __call__(self, model_fn, x, y):
        start = base.uniform(x, self.epsilon)
        step = self.alpha * base.signed_gradient(model_fn, x + start, y)
        delta = tf.clip_by_value(start + step, -self.epsilon, self.epsilon)
        return tf.clip_by_value(x + delta, 0.0, 1.0)


register(MethodSpec(
    "rfgsm", RFGSM,
    (Option("alpha", None, optional_positive, "RFGSM step (default: --alpha-ratio × ε)", keyword=None),
     Option("alpha_ratio", 1.2, positive, "RFGSM step in units of ε (paper 1.2, Wong et al. 1.25)", keyword=None)),
    keywords=lambda o, epsilon: {"alpha": o["alpha"] or o["alpha_ratio"] * epsilon},
    about="FGSM-RS: FGSM from a uniform random start, projected back (Wong et al.)"))
