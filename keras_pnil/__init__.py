"""keras-pnil: fast, honest adversarial training for Keras (Schwinn et al.'s NFGSM and PNIL).

Add `PixelwiseNoiseInjection` to a model, train it with
`adversarial(model, "nfgsm", epsilon).fit(...)`, and measure it with
`robustness(model, x, y, epsilon, attacks=...)` or any single attack
(`pgd`, `spsa`, `apgd`, `square`, `autoattack`), all EOT-aware.
"""

from keras_pnil import (
                        attacks,
                        callbacks,
                        data,
                        evaluation,
                        files,
                        models,
                        recipe,
                        report,
                        reproduce,
                        runs,
                        schedules,
                        stats,
                        training,
                        validation,
)
from keras_pnil.attacks import EOT, apgd, autoattack, get_attack, pgd, run_autoattack, spsa, square
from keras_pnil.evaluation import Budget, RobustnessResult, accuracy, robustness
from keras_pnil.layers import PixelwiseNoiseInjection
from keras_pnil.training import AdversarialModel, adversarial

__version__ = "0.1.0"
__all__ = [
    "EOT", "AdversarialModel", "Budget", "PixelwiseNoiseInjection", "RobustnessResult", "accuracy", "adversarial",
    "apgd", "attacks", "autoattack", "callbacks", "data", "evaluation", "files", "get_attack", "models", "pgd",
    "recipe", "report", "reproduce", "robustness", "run_autoattack", "runs", "schedules", "spsa", "square", "stats",
    "training", "validation",
]
