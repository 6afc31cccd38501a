"""keras-pnil: fast, honest adversarial training for Keras (Schwinn et al.'s NFGSM and PNIL).

Add `PixelwiseNoiseInjection` to a model, train it with
`adversarial(model, "nfgsm", epsilon).fit(...)`, and measure it with
`robustness(model, x, y, epsilon, attacks=...)` or any single attack
(`pgd`, `spsa`, `apgd`, `square`, `autoattack`), all EOT-aware.
"""

import contextlib
import os

# TensorFlow's C++ start-up lines (absl's "before InitializeLog" notice, oneDNN and CUDA probing on machines
# without a GPU) carry nothing a user can act on; hide them unless the user chose a log level below 2.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silences file descriptor 2 (where TensorFlow's C++ writes, whatever its log level) for a moment."""
    if int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0) < 2:
        yield
        return
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


with _quiet_native_stderr():  # imports TensorFlow and probes its devices, the two noisy steps
    import tensorflow as _tf

    _tf.config.list_physical_devices("GPU")

# ruff: noqa: E402
from keras_pnil import (
    attacks,
    callbacks,
    correctness,
    curves,
    data,
    evaluation,
    experiments,
    figures,
    files,
    history,
    inputs,
    loading,
    masking,
    methods,
    models,
    paper,
    plan,
    pnil_diagnostics,
    recipe,
    records,
    report,
    reproduce,
    results,
    runs,
    schedules,
    stats,
    summary,
    training,
    validation,
)
from keras_pnil.attacks import (
    EOT,
    apgd,
    apgd_targeted,
    autoattack,
    fab_targeted,
    get_attack,
    pgd,
    probe,
    run_autoattack,
    spsa,
    square,
)
from keras_pnil.correctness import accuracy
from keras_pnil.evaluation import RobustnessResult, robustness
from keras_pnil.layers import PixelwiseNoiseInjection
from keras_pnil.plan import Plan, PlanRequest
from keras_pnil.training import AdversarialModel, adversarial

__version__ = records.VERSION
__all__ = [
    "EOT", "AdversarialModel", "PixelwiseNoiseInjection", "Plan", "PlanRequest", "RobustnessResult", "accuracy",
    "adversarial", "apgd", "apgd_targeted", "attacks", "autoattack", "callbacks", "correctness", "curves", "data",
    "evaluation", "experiments", "fab_targeted", "figures", "files", "get_attack", "history", "inputs", "loading",
    "masking", "methods", "models", "paper", "pgd", "plan", "pnil_diagnostics", "probe", "recipe", "records",
    "report",
    "reproduce", "results", "robustness", "run_autoattack", "runs", "schedules", "spsa", "square", "stats", "summary",
    "training", "validation",
]
