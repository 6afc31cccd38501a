"""Callbacks for adversarial training: best-checkpoint selection, the convergence rule, the catastrophic-overfitting
monitor and the PNIL's per-epoch statistics."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class StopRule:
    """When `CatastrophicOverfittingMonitor` (with `early_stop`) stops a run on a collapse of its PGD accuracy.

    Attributes:
        reference: "best": stop when the accuracy falls more than `drop` below the best of the epochs so
            far; "previous": below the previous epoch's (Wong et al.'s CIFAR-10 code, `train_fgsm.py`).
        drop: The fall, in accuracy (0.2: twenty points), that counts as a collapse.
        steps: PGD steps of a separate check on a batch of training images drawn each epoch (Wong et al.:
            PGD-5 on the epoch's first training batch); None: the monitor's validation check decides.
        step_fraction: That check's PGD step in units of ε (Wong et al.: 2/255 at ε = 8/255, 1/4).

    Example:
        >>> StopRule(reference="previous").collapsed(0.1, best=0.5, previous=0.45)
        True
    """

    reference: str = "best"
    drop: float = 0.2
    steps: int | None = None
    step_fraction: float = 0.25

    def collapsed(self, accuracy: float, best: float | None, previous: float | None) -> bool:
        """Whether `accuracy` is a collapse after the `best` and `previous` epochs' (None before any)."""
        reference = best if self.reference == "best" else previous
        return reference is not None and accuracy < reference - self.drop


# "best": the monitor's own validation check against its best (ours); "wong": Wong et al.'s CIFAR-10 rule.
STOP_RULES = {"best": StopRule(), "wong": StopRule(reference="previous", drop=0.2, steps=5, step_fraction=0.25)}


class CatastrophicOverfittingMonitor(keras.callbacks.Callback):
    """Logs PGD accuracy on a fixed validation batch each epoch; optionally stops on a collapse.

    Catastrophic overfitting (Wong et al.) shows as PGD accuracy falling far
    below its best within an epoch while clean accuracy stays high. With
    `early_stop`, a collapse by `rule` (default: more than `drop` below the
    best seen, on the validation batch) stops training and restores the
    weights of the epoch before the collapse. A rule with its own `steps`
    (Wong et al.'s: PGD-5 on a training batch, against the previous epoch)
    attacks `stop_batches[epoch]` (one (x, y) batch of training images per
    epoch) and logs that accuracy as `pgd_train_batch_accuracy`. On a model
    with a random layer, `pgd_val_accuracy` is measured with `eot_samples` EOT
    draws and `pgd_no_eot_val_accuracy` with one, so a collapse hidden from
    attacks without EOT shows as a gap between the two. With a `state_dir`,
    the best and last accuracy so far and the previous epoch's weights are
    kept on disk, so a collapse that spans a resumed run is still seen (and undone).
    The PGD runs in the ε-ball of `norm` (the run's: "linf" or "l2").
    """

    def __init__(self, x, y, epsilon: float, steps: int = 10, eot_samples: int = 4,
                 early_stop: bool = False, drop: float = 0.2, state_dir=None, rule: StopRule | None = None,
                 stop_batches=None, norm: str = "linf"):
        super().__init__()
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y)
        self.epsilon, self.steps, self.eot_samples, self.norm = epsilon, steps, eot_samples, norm
        self.early_stop, self.rule = early_stop, rule or StopRule(drop=drop)
        if self.rule.steps is not None and stop_batches is None:
            raise ValueError("A stop rule with its own PGD check needs stop_batches: one (x, y) batch of training "
                             "images per epoch.")
        self.stop_batches = stop_batches
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.best, self.last, self.collapsed_at = -1.0, None, None

    @property
    def _weights_path(self) -> Path:
        return self.state_dir / "previous.weights.h5"

    def on_train_begin(self, logs=None):
        self._previous_weights = None
        if self.state_dir is not None and (self.state_dir / "state.json").exists():
            state = read_json(self.state_dir / "state.json")
            self.best, self.last = state["best"], state.get("last")
            if self._weights_path.exists():
                self._previous_weights = self._load_previous()

    def _load_previous(self) -> list:
        current = self.model.get_weights()
        self.model.load_weights(self._weights_path)
        previous = self.model.get_weights()
        self.model.set_weights(current)
        return previous

    def _remember(self, epoch: int) -> None:
        """Keeps the best and last accuracy and, when a collapse would be undone, this epoch's weights."""
        if self.early_stop:
            self._previous_weights = self.model.get_weights()
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.early_stop:
            tmp = self.state_dir / ".previous.tmp.weights.h5"
            self.model.save_weights(tmp)
            os.replace(tmp, self._weights_path)
        atomic_write_json(self.state_dir / "state.json", {"best": self.best, "last": self.last, "epoch": epoch + 1})

    def _pgd_accuracy(self, x, y, eot_samples: int, steps: int, step_size: float | None = None) -> float:
        x_adv = pgd(self.model, x, y, self.epsilon, steps=steps, step_size=step_size, eot_samples=eot_samples,
                    norm=self.norm)
        return correctness.accuracy(self.model, x_adv, y)

    def _rule_accuracy(self, epoch: int, eot_samples: int, logs: dict | None) -> float | None:
        """The accuracy the rule judges: its own check on this epoch's training batch, if it has one."""
        if self.rule.steps is None:
            return None
        x, y = self.stop_batches[epoch % len(self.stop_batches)]
        accuracy = self._pgd_accuracy(np.asarray(x, np.float32), np.asarray(y), eot_samples, self.rule.steps,
                                      self.rule.step_fraction * self.epsilon)
        if logs is not None:
            logs["pgd_train_batch_accuracy"] = accuracy
        return accuracy

    def on_epoch_end(self, epoch, logs=None):
        random = probe(self.model, self.x).random
        eot_samples = self.eot_samples if random else 1
        pgd_accuracy = self._pgd_accuracy(self.x, self.y, eot_samples, self.steps)
        if logs is not None:
            logs["pgd_val_accuracy"] = pgd_accuracy
            if random:
                logs["pgd_no_eot_val_accuracy"] = self._pgd_accuracy(self.x, self.y, 1, self.steps)
        judged = self._rule_accuracy(epoch, eot_samples, logs)
        judged = pgd_accuracy if judged is None else judged
        best = self.best if self.best >= 0 else None
        if self.early_stop and self._previous_weights and self.rule.collapsed(judged, best, self.last):
            log.warning(f"Catastrophic overfitting at epoch {epoch + 1}: PGD accuracy {judged:.3f} after "
                        f"{self.rule.reference} {(best if self.rule.reference == 'best' else self.last):.3f}; "
                        "stopping and restoring the previous epoch.")
            self.model.set_weights(self._previous_weights)
            self.model.stop_training, self.collapsed_at = True, epoch + 1
            return
        self.best, self.last = max(self.best, judged), judged
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
