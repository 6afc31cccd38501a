"""Clean training: no perturbation (ε and the norm are only recorded)."""

from __future__ import annotations

from keras_pnil.methods.base import Method
from keras_pnil.methods.registry import STEP_COST, MethodSpec, register
from keras_pnil.threat import NORMS


class Clean(Method):
    """No perturbation: ordinary training. ε and the norm are only recorded (every norm is accepted: they say
    in which threat model the run is evaluated by default, e.g. a clean control for an L2 run).

    Example:
        >>> trainer = kp.adversarial(model, "clean", 2.0, norm="l2")  # doctest: +SKIP
    """

    name = "clean"
    norms = tuple(NORMS)

    def __call__(self, model_fn, x, y):
        return x


register(MethodSpec("clean", Clean, cost=lambda o: STEP_COST, about="ordinary training on the clean images"))
