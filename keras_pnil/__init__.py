"""keras-pnil: fast, honest adversarial training for Keras (Schwinn et al.'s NFGSM and PNIL)."""

from keras_pnil import attacks, callbacks, data, evaluation, models, report, reproduce, schedules, stats, training
from keras_pnil.layers import PixelwiseNoiseInjection
from keras_pnil.training import AdversarialModel, adversarial

__version__ = "0.1.0"
__all__ = [
    "AdversarialModel",
    "PixelwiseNoiseInjection",
    "adversarial",
    "attacks",
    "callbacks",
    "data",
    "evaluation",
    "models",
    "report",
    "reproduce",
    "schedules",
    "stats",
    "training",
]
