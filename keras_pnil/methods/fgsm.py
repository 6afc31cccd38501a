"""FGSM training (Goodfellow et al.): x + ε·sign(∇x L), clipped to [0, 1]."""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.attacks.eot import input_gradient
from keras_pnil.methods import base
from keras_pnil.methods.registry import MethodSpec, register


def fgsm_step(model_fn, x, y, epsilon: float, gradient=None):
    """clip(x + ε·sign(∇x L), 0, 1), with `gradient` = ∇x L at x when the caller already took it."""
    gradient = tf.stop_gradient(input_gradient(model_fn, x, y)) if gradient is None else gradient
    return tf.clip_by_value(x + epsilon * tf.sign(gradient), 0.0, 1.0)


class FGSM(base.Method):
    """x + ε·sign(∇x L), clipped to [0, 1] (Goodfellow et al.).

    Example:
        >>> trainer = kp.adversarial(model, "fgsm", 0.1)  # doctest: +SKIP
    """

    name = "fgsm"

    def __call__(self, model_fn, x, y):
        return fgsm_step(model_fn, x, y, self.epsilon)


register(MethodSpec("fgsm", FGSM, about="FGSM from the image (Goodfellow et al.)"))
