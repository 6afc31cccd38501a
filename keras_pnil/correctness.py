"""Accuracy of a model that may be random: per image, the fraction of noise draws that classify it right."""

from __future__ import annotations

import numpy as np

from keras_pnil.attacks.eot import probe
from keras_pnil.inputs import check_inputs
from keras_pnil.validation import check_choice, check_count

ACCURACY_MODES = ("expected", "mean_softmax")


def per_example_correct(model, x, y, draws: int = 1, mode: str = "expected", batch_size: int = 1000,
                        random: bool | None = None) -> np.ndarray:
    """Per-image correctness of a (possibly random) model, in [0, 1].

    `mode="expected"` (default): the fraction of `draws` single stochastic
    forward passes that classify the image correctly, an unbiased estimate of
    the accuracy a user of the random model experiences. `mode="mean_softmax"`:
    1 if the softmax averaged over `draws` passes predicts the label, else 0.
    A deterministic model (`random=False`, or judged by `probe` when None) is
    called once. Inputs are trusted: public callers check them first.
    """
    check_choice("accuracy mode", mode, ACCURACY_MODES)
    random = probe(model, x).random if random is None else random
    draws = draws if random else 1
    out = np.empty(len(x), np.float64)
    for i in range(0, len(x), batch_size):
        batch = np.asarray(x[i:i + batch_size], np.float32)
        passes = np.stack([np.asarray(model(batch, training=False)) for _ in range(draws)])
        labels = y[i:i + batch_size]
        if mode == "expected":
            out[i:i + batch_size] = (passes.argmax(-1) == labels).mean(0)
        else:
            softmax = np.exp(passes - passes.max(-1, keepdims=True))
            softmax /= softmax.sum(-1, keepdims=True)
            out[i:i + batch_size] = softmax.mean(0).argmax(-1) == labels
    return out


def accuracy(model, x, y, draws: int = 1, mode: str = "expected") -> float:
    """The model's accuracy on `(x, y)`: the mean of `per_example_correct`.

    Example:
        >>> accuracy(model, x_test, y_test, draws=10)  # a random model: the mean over 10 draws per image
        0.97
    """
    x, y = check_inputs(model, x, y)
    check_count("draws", draws)
    return float(per_example_correct(model, x, y, draws, mode).mean())
