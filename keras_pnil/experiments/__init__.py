"""The experiments that ship with the package: suites (`suites/*.json`) and training configurations (`train/*.json`).

They are package data, so an installed package (not only a checkout) can run
`keras-pnil-reproduce --suite table1` or `keras-pnil-train --config mnist_nfgsm`
from any directory. A name finds the shipped file; a path to an existing file
is used as it is.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES, TRAIN_CONFIGS = HERE / "suites", HERE / "train"


def _find(name_or_path, folder: Path, what: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    # A bare name ("table1"), or a checkout-relative one ("train/mnist_nfgsm.json"), means a shipped file.
    shipped = folder / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in folder.glob("*.json"))
    raise FileNotFoundError(2, f"no {what} {str(name_or_path)!r}: not a file, and not one of the shipped {available}")


def suite_path(name_or_path) -> Path:
    """The suite file: a path, or the name of a shipped suite (table1, large_eps, mnist_eps03)."""
    return _find(name_or_path, SUITES, "suite")


def train_config_path(name_or_path) -> Path:
    """The training configuration file: a path, or the name of a shipped one (mnist_nfgsm, ...)."""
    return _find(name_or_path, TRAIN_CONFIGS, "training configuration")
