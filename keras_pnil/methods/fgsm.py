"""FGSM training (Goodfellow et al.): x + ε·sign(∇x L), clipped to [0, 1]; in L2, x + ε·∇x L/‖∇x L‖₂."""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.attacks.eot import input_gradient
from keras_pnil.methods import base
from keras_pnil.methods.registry import MethodSpec, register
from keras_pnil.threat import DEFAULT_BOUNDS, NORMS, ThreatModel

LINF = ThreatModel(NORMS["linf"], 0.5, DEFAULT_BOUNDS)  # only its ascent is used: sign(∇)


def fgsm_step(model_fn, x, y, epsilon: float, gradient=None, threat: ThreatModel = LINF):
    """clip(x + ε·ascent(∇x L), 0, 1), ascent = `threat`'s (sign for L∞), with `gradient` = ∇x L at x when the
    caller already took it."""
    gradient = tf.stop_gradient(input_gradient(model_fn, x, y)) if gradient is None else gradient
    return tf.clip_by_value(x + epsilon * threat.ascent(gradient), 0.0, 1.0)


class FGSM(base.Method):
    """x + ε·sign(∇x L), clipped to [0, 1] (Goodfellow et al.).

    In L2 (`norm="l2"`) the step is ε·∇/‖∇‖₂: the fast gradient method in
    L2 (Goodfellow et al.'s steepest ascent for the L2 ball; CleverHans's
    `fast_gradient_method` with `norm=2`). Clipping to [0, 1] is then the
    exact projection onto the L2 ball ∩ box: it only shortens the step.

    Example:
        >>> trainer = kp.adversarial(model, "fgsm", 0.1)  # doctest: +SKIP
        >>> trainer = kp.adversarial(model, "fgsm", 2.0, norm="l2")  # doctest: +SKIP
    """

    name = "fgsm"
    norms = ("linf", "l2")

    def __call__(self, model_fn, x, y):
        return fgsm_step(model_fn, x, y, self.epsilon, threat=self.threat)


register(MethodSpec("fgsm", FGSM, about="FGSM from the image (Goodfellow et al.)"))
