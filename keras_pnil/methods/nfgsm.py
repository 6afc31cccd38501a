"""Noisy FGSM (Schwinn et al.'s Algorithm 1; k = 2 is de Jorge et al.'s N-FGSM, `train.py`), L∞ or L2."""

from __future__ import annotations

import tensorflow as tf

from keras_pnil.methods import base
from keras_pnil.methods.registry import GRADIENT_COST, STEP_COST, MethodSpec, Option, count, positive, register
from keras_pnil.validation import check_count, check_positive


class NFGSM(base.Method):
    """Noisy FGSM, Algorithm 1 of Schwinn et al.

    x_n = clip(x + U(-kε, kε), 0, 1) with k = `noise_multiplier`;
    r = ε·sign(Σ_l ∇ L(F(x_n))) over `eot_samples` draws of the model's own
    noise; train on clip(x_n + r, 0, 1). There is no projection back to the
    ε-ball: the noise is part of the training distribution. Both clips keep the
    model (and its gradient) on valid images, as every test-time input is;
    they follow de Jorge et al.'s N-FGSM code (`train.py`), which clamps the
    noisy point before taking the gradient. k = 2 gives their N-FGSM.

    L2 (`norm="l2"`): the same algorithm with the L2 ball's noise and step
    (neither paper defines one; U(-kε, kε)ᵈ is the uniform draw from the L∞
    ball of radius kε, so its L2 form is the uniform draw from the L2 ball):
    x_n = clip(x + u, 0, 1), u uniform in the L2 ball of radius kε
    (`base.uniform_ball`); r = ε·g/‖g‖₂, g = Σ_l ∇ L(F(x_n)); train on
    clip(x_n + r, 0, 1), again without projection (‖δ‖₂ <= (k + 1)ε).

    Example:
        >>> trainer = kp.adversarial(model, "nfgsm", 0.3, noise_multiplier=2.0)  # doctest: +SKIP
        >>> trainer = kp.adversarial(model, "nfgsm", 2.0, norm="l2", noise_multiplier=2.0)  # doctest: +SKIP
    """

    name = "nfgsm"
    norms = ("linf", "l2")

    def __init__(self, epsilon: float, eot_samples: int = 1, noise_multiplier: float = 1.0, norm: str = "linf"):
        super().__init__(epsilon, norm)
        self.eot_samples = check_count("eot_samples", eot_samples)
        self.noise_multiplier = check_positive("noise_multiplier", noise_multiplier)

    def __call__(self, model_fn, x, y):
        noise = base.uniform_ball(x, self.noise_multiplier * self.epsilon, self.norm)
        noisy = tf.clip_by_value(x + noise, 0.0, 1.0)
        step = self.epsilon * base.ascent(self.threat, model_fn, noisy, y, self.eot_samples)
        return tf.clip_by_value(noisy + step, 0.0, 1.0)


register(MethodSpec(
    "nfgsm", NFGSM,
    (Option("eot_samples", 1, count, "NFGSM gradient samples L (default 1)"),
     Option("noise_multiplier", 1.0, positive, "NFGSM noise U(-kε, kε) (default 1; de Jorge et al.'s N-FGSM: 2)")),
    cost=lambda o: STEP_COST + GRADIENT_COST * o["eot_samples"],
    about="noisy FGSM (Schwinn et al.; --noise-multiplier 2: de Jorge et al.'s N-FGSM)"))
