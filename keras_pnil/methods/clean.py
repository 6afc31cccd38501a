"""Clean training: no perturbation (ε is only recorded)."""

from __future__ import annotations

from keras_pnil.methods.base import Method
from keras_pnil.methods.registry import STEP_COST, MethodSpec, register


class Clean(Method):
    """No perturbation: ordinary training (ε is only recorded)."""

    name = "clean"

    def __call__(self, model_fn, x, y):
        return x


register(MethodSpec("clean", Clean, cost=lambda o: STEP_COST, about="ordinary training on the clean images"))
