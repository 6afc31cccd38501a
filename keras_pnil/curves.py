"""Accuracy curves of PGD: against ε (the paper's Figure 5) and against the EOT draws (Figure 4)."""

from __future__ import annotations

from keras_pnil.attacks.pgd import pgd
from keras_pnil.correctness import per_example_correct
from keras_pnil.inputs import check_inputs
from keras_pnil.validation import check_count


def _pgd_accuracy(model, x, y, epsilon: float, steps: int, eot_samples: int, draws: int) -> float:
    x_adv = pgd(model, x, y, epsilon, steps=steps, eot_samples=eot_samples)
    return float(per_example_correct(model, x_adv, y, draws).mean())


def epsilon_sweep(model, x, y, epsilons, steps: int = 50, eot_samples: int = 1, draws: int = 10) -> list[float]:
    """PGD accuracy at each ε (the paper's Figure 5); it should fall towards 0.

    Example:
        >>> epsilon_sweep(model, x, y, [0.05, 0.1, 0.3], steps=20)
        [0.91, 0.62, 0.0]
    """
    x, y = check_inputs(model, x, y)
    return [_pgd_accuracy(model, x, y, e, steps, eot_samples, draws) for e in epsilons]


def eot_curve(model, x, y, epsilon: float, samples_list, steps: int = 50, draws: int = 10) -> list[float]:
    """PGD accuracy against the number of EOT draws of its gradients (the paper's Figure 4), one point each.

    Example:
        >>> eot_curve(pnil_model, x, y, 8 / 255, [1, 4, 16], steps=20)
        [0.95, 0.93, 0.92]
    """
    x, y = check_inputs(model, x, y)
    return [_pgd_accuracy(model, x, y, epsilon, steps, check_count("EOT samples", s), draws) for s in samples_list]
