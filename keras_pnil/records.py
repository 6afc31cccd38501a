"""Evaluation records keyed on exactly what was evaluated, so nothing stale is ever read back.

A key is a hash of the images' and labels' contents, the model's weights (and
its class and shapes), the resolved plan and the library's version. A model's
record (`<out>/<name>.json`) is reused only under an equal key; each finished
stage of an evaluation (clean accuracy, each attack) is kept under
`<out>/<name>.stages/` with the same key, so an interrupted evaluation resumes
at the next attack. Everything is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from keras_pnil.files import atomic_write_json, read_json

VERSION = "0.7.0"  # the library's; a new version never reads back an older one's numbers


def evaluation_key(model, x, y, plan) -> str:
    """The hash of the images, labels, the model's weights, the plan and the library's version.

    Example:
        >>> evaluation_key(model, x, y, plan)[:12]
        '3f9c1e0a7b42'
    """
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    digest.update(type(model).__name__.encode())
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    digest.update(plan.fingerprint().encode())
    digest.update(VERSION.encode())
    return digest.hexdigest()


def read_record(path, key: str) -> dict | None:
    """The record stored at `path` under `key`, else None (absent, unreadable or for other inputs)."""
    try:
        stored = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    return stored if isinstance(stored, dict) and stored.get("key") == key else None


def write_record(path, key: str, record: dict) -> Path:
    """Writes `record` under `key` atomically."""
    return atomic_write_json(path, {**record, "key": key})


class StageStore:
    """Per-image results of each finished stage of one evaluation, under its key (see `evaluation.evaluate`).

    Example:
        >>> store = StageStore(out / "model.stages", key)
        >>> evaluate(model, x, y, plan, store=store)  # a second call after Ctrl-C skips the finished attacks
    """

    def __init__(self, directory, key: str):
        self.directory, self.key = Path(directory), key

    def load(self, name: str) -> np.ndarray | None:
        stored = read_record(self.directory / f"{name}.json", self.key)
        return None if stored is None else np.asarray(stored["values"], np.float64)

    def clear(self) -> None:
        """Removes the stored stages (once the whole record is written)."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory)

    def save(self, name: str, values) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        values = [None if np.isnan(v) else float(v) for v in np.asarray(values, np.float64)]
        write_record(self.directory / f"{name}.json", self.key, {"stage": name, "values": values})
