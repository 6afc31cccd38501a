"""A training run's per-epoch log (`history.csv`): reading it and finding where robustness collapsed."""

from __future__ import annotations

import csv
import io
from pathlib import Path


def read_history(path) -> dict:
    """A run's per-epoch log (`history.csv`) as {column: [values]}; {} if it has none.

    Example:
        >>> read_history("runs/mnist-nfgsm-pnil-fold0/history.csv")["val_loss"]
        [0.52, 0.31, 0.28]
    """
    path = Path(path)
    if not path.exists():
        return {}
    rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if r.get("epoch") != "epoch"]
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in (rows[0] if rows else {})}


def collapse_epoch(values, drop: float = 0.2):
    """The first epoch (1-based) whose value falls more than `drop` below the best before it, else None.

    Example:
        >>> collapse_epoch([0.5, 0.6, 0.3, 0.1])  # PGD accuracy per epoch: epoch 3 fell 30 points
        3
    """
    for epoch in range(1, len(values)):
        if values[epoch] < max(values[:epoch]) - drop:
            return epoch + 1
    return None
