"""FGSM from a random start (FGSM-RS, Wong et al., "Fast is better than free", `MNIST/train_mnist.py`), L∞ or L2."""

from __future__ import annotations

from keras_pnil.methods import base
from keras_pnil.methods.registry import MethodSpec, Option, optional_positive, positive, register
from keras_pnil.validation import check_positive


class RFGSM(base.Method):
    """FGSM from a random start, projected back (Wong et al.'s FGSM-RS, "Fast is better than free").

    L∞: u ~ U(-ε, ε); the gradient is taken at x + u as it is (not clipped
    to [0, 1]); δ = clip(u + α·sign(∇), -ε, ε); train on clip(x + δ, 0, 1):
    Wong et al.'s `MNIST/train_mnist.py` step for step. The paper uses
    α = 1.2ε; Wong et al. 1.25ε.

    L2 (`norm="l2"`), the same algorithm with the L2 ball's own start, step
    and projection (those of L2 PGD: Madry et al.; Rony et al.'s and the
    `robustness` library's L2 steps): u uniform in the L2 ball of radius ε
    (`base.uniform_ball`); the gradient at x + u; train on
    Π(x + u + α·∇/‖∇‖₂), Π the exact projection onto the ε L2 ball around x
    intersected with [0, 1] (`keras_pnil.threat`). α is the same multiple of
    ε. Wong et al. define FGSM-RS for L∞ only; this is its direct L2 form.

    Example:
        >>> trainer = kp.adversarial(model, "rfgsm", 0.3, alpha=0.375)  # doctest: +SKIP
        >>> trainer = kp.adversarial(model, "rfgsm", 2.0, norm="l2")  # α = 1.2ε  # doctest: +SKIP
    """

    name = "rfgsm"
    norms = ("linf", "l2")

    def __init__(self, epsilon: float, alpha: float | None = None, norm: str = "linf"):
        super().__init__(epsilon, norm)
        self.alpha = 1.2 * self.epsilon if alpha is None else check_positive("alpha", alpha)

    def __call__(self, model_fn, x, y):
        start = base.uniform_ball(x, self.epsilon, self.norm)
        step = self.alpha * base.ascent(self.threat, model_fn, x + start, y)
        return self.threat.project(x + (start + step), x)


register(MethodSpec(
    "rfgsm", RFGSM,
    (Option("alpha", None, optional_positive, "RFGSM step (default: --alpha-ratio × ε)", keyword=None),
     Option("alpha_ratio", 1.2, positive, "RFGSM step in units of ε (paper 1.2, Wong et al. 1.25)", keyword=None)),
    keywords=lambda o, epsilon: {"alpha": o["alpha"] or o["alpha_ratio"] * epsilon},
    about="FGSM-RS: FGSM from a uniform random start, projected back (Wong et al.)"))
