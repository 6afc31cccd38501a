"""Callbacks for adversarial training: best-checkpoint selection, the convergence rule, the catastrophic-overfitting
monitor and the PNIL's per-epoch statistics."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import keras
import numpy as np

from keras_pnil import correctness, pnil_diagnostics
from keras_pnil.attacks.eot import probe
from keras_pnil.attacks.pgd import pgd
from keras_pnil.files import atomic_write_json, read_json
from keras_pnil.history import read_history

log = logging.getLogger("keras_pnil")


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights with the lowest `monitor` (default: adversarial validation loss).

    Both weights and the best value are on disk, so a resumed run keeps
    comparing against the true best; at the end of training the best weights
    are restored.
    """

    def __init__(self, directory, monitor: str = "val_loss"):
        super().__init__()
        self.directory, self.monitor = Path(directory), monitor
        self.weights_path = self.directory / "best.weights.h5"
        self.record_path = self.directory / "best.json"

    def _best(self) -> float:
        if self.record_path.exists():
            return read_json(self.record_path)["value"]
        return math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value) or value >= self._best():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / ".best.tmp.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.weights_path)
        atomic_write_json(self.record_path, {"epoch": epoch + 1, "monitor": self.monitor, "value": float(value)})

    def on_train_end(self, logs=None):
        if self.weights_path.exists():
            self.model.load_weights(self.weights_path)


class ConvergenceStop(keras.callbacks.Callback):
    """Stops training once `monitor` (default: the adversarial validation loss) has not reached a new low for
    `patience` epochs: the paper's "trained to convergence" as a rule.

    A new low must lie more than `min_delta` (a fraction of the best so far) below the best: with a cyclical
    learning rate the loss dips a little at every trough of the rate long after it has stopped improving.
    Unlike Keras' `EarlyStopping`, it counts the epochs of earlier sessions of the same run (read from its
    `history` CSV), so a killed and resumed run stops where an uninterrupted one would. `stopped_at` is the
    1-based epoch it stopped after, or None.
    """

    def __init__(self, patience: int, history=None, monitor: str = "val_loss", min_delta: float = 0.0):
        super().__init__()
        self.patience, self.history, self.monitor, self.min_delta = patience, history, monitor, min_delta
        self.best, self.wait, self.stopped_at = math.inf, 0, None

    def _update(self, value: float) -> None:
        if value < self.best * (1 - self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.stopped_at = math.inf, 0, None
        for value in read_history(self.history).get(self.monitor, []) if self.history else []:
            self._update(value)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self._update(float(value))
        if self.wait >= self.patience:
            log.info(f"Converged: {self.monitor} has not improved on {self.best:.4f} for {self.wait} epochs; "
                     f"stopping after epoch {epoch + 1}.")
            self.model.stop_training, self.stopped_at = True, epoch + 1


class CatastrophicOverfittingMonitor(keras.callbacks.Callback):
    """Logs PGD accuracy on a fixed validation batch each epoch; optionally stops on a collapse.

    Catastrophic overfitting (Wong et al.) shows as PGD accuracy falling far
    below its best within an epoch while clean accuracy stays high. With
    `early_stop`, a drop of more than `drop` below the best seen stops training
    and restores the weights of the epoch before the collapse. On a model with
    a random layer, `pgd_val_accuracy` is measured with `eot_samples` EOT draws
    and `pgd_no_eot_val_accuracy` with one, so a collapse hidden from attacks
    without EOT shows as a gap between the two. With a `state_dir`, the best
    accuracy so far and the previous epoch's weights are kept on disk, so a
    collapse that spans a resumed run is still seen (and undone).
    """

    def __init__(self, x, y, epsilon: float, steps: int = 10, eot_samples: int = 4,
                 early_stop: bool = False, drop: float = 0.2, state_dir=None):
        super().__init__()
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y)
        self.epsilon, self.steps, self.eot_samples = epsilon, steps, eot_samples
        self.early_stop, self.drop = early_stop, drop
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.best, self.collapsed_at = -1.0, None

    @property
    def _weights_path(self) -> Path:
        return self.state_dir / "previous.weights.h5"

    def on_train_begin(self, logs=None):
        self._previous_weights = None
        if self.state_dir is not None and (self.state_dir / "state.json").exists():
            self.best = read_json(self.state_dir / "state.json")["best"]
            if self._weights_path.exists():
                self._previous_weights = self._load_previous()

    def _load_previous(self) -> list:
        current = self.model.get_weights()
        self.model.load_weights(self._weights_path)
        previous = self.model.get_weights()
        self.model.set_weights(current)
        return previous

    def _remember(self, epoch: int) -> None:
        """Keeps the best accuracy and, when a collapse would be undone, this epoch's weights."""
        if self.early_stop:
            self._previous_weights = self.model.get_weights()
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.early_stop:
            tmp = self.state_dir / ".previous.tmp.weights.h5"
            self.model.save_weights(tmp)
            os.replace(tmp, self._weights_path)
        atomic_write_json(self.state_dir / "state.json", {"best": self.best, "epoch": epoch + 1})

    def _pgd_accuracy(self, eot_samples: int) -> float:
        x_adv = pgd(self.model, self.x, self.y, self.epsilon, steps=self.steps, eot_samples=eot_samples)
        return correctness.accuracy(self.model, x_adv, self.y)

    def on_epoch_end(self, epoch, logs=None):
        random = probe(self.model, self.x).random
        pgd_accuracy = self._pgd_accuracy(self.eot_samples if random else 1)
        if logs is not None:
            logs["pgd_val_accuracy"] = pgd_accuracy
            if random:
                logs["pgd_no_eot_val_accuracy"] = self._pgd_accuracy(1)
        if self.early_stop and pgd_accuracy < self.best - self.drop and self._previous_weights:
            log.warning(f"Catastrophic overfitting at epoch {epoch + 1}: PGD accuracy {pgd_accuracy:.3f} "
                        f"after a best of {self.best:.3f}; stopping and restoring the previous epoch.")
            self.model.set_weights(self._previous_weights)
            self.model.stop_training, self.collapsed_at = True, epoch + 1
            return
        self.best = max(self.best, pgd_accuracy)
        self._remember(epoch)


class PNILStatistics(keras.callbacks.Callback):
    """Logs what the PNIL has learned after every epoch, so its history shows whether (and when) it learns.

    Adds `pnil_sigma_object` and `pnil_sigma_background` (mean noise σ on
    the object and background pixels of `x`, as in the paper's Figure 1),
    `pnil_mean_bias` and `pnil_mean_abs_kernel` to the epoch's logs (see
    `pnil_diagnostics.pnil_structure`).

    Args:
        layer: The model's `PixelwiseNoiseInjection`.
        x: Fixed images to measure σ on (a few hundred validation images).
    """

    def __init__(self, layer, x):
        super().__init__()
        self.layer, self.x = layer, np.asarray(x, np.float32)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        stats = pnil_diagnostics.pnil_structure(self.layer, self.x)
        for key in ("sigma_object", "sigma_background", "mean_bias", "mean_abs_kernel"):
            logs[f"pnil_{key}"] = stats[key]
