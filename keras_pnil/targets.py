"""What `keras-pnil-evaluate` evaluates besides run directories: any Keras model file, on any images.

A model file carries no training configuration, so the images come from the
command (a data set's test split or the user's own `.npz` arrays) and ε must
be given. Models with the user's own layers load after the files that define
them are imported (`--custom-objects`); Keras' safe mode stays on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np

from keras_pnil import data as datasets
from keras_pnil import runs
from keras_pnil.layers import find_pnil

MODEL_SUFFIX = ".keras"


def check_target(path) -> None:
    """Raises a RunError unless `path` is a finished run directory or a Keras model file (or a folder of one)."""
    path = Path(path)
    if is_model_file(path):
        if path.suffix != MODEL_SUFFIX and not path.is_dir():
            raise runs.RunError(f"{path} is neither a run directory of keras-pnil-train nor a Keras model file "
                                f"({MODEL_SUFFIX})")
        runs.check_model_file(model_path(path))
    else:
        runs.check_run(path)


def is_model_file(path) -> bool:
    """Whether the target `path` is a model file, or a folder holding only `model.keras` (else a run)."""
    path = Path(path)
    return not path.is_dir() or ((path / runs.MODEL).exists() and not (path / runs.CONFIG).exists())


def model_path(path) -> Path:
    """The `.keras` file of a target: the file itself, or the `model.keras` of a folder or run directory."""
    path = Path(path)
    return path / runs.MODEL if path.is_dir() else path


def import_custom_objects(paths) -> None:
    """Imports each Python file in `paths`, so the layers it registers with Keras can be loaded."""
    for i, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"custom objects file {path}: no such file")
        spec = importlib.util.spec_from_file_location(f"keras_pnil_custom_objects_{i}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code may raise anything; say which file and what
            raise ValueError(f"cannot import custom objects from {path}: {type(err).__name__}: {err}") from None


def load_model_file(path) -> keras.Model:
    """A Keras model from a `.keras` file, with a RunError that names the file if it cannot be loaded."""
    runs.check_model_file(path)
    try:
        return keras.models.load_model(path)  # safe_mode on: the file cannot run code of its own
    except Exception as err:  # Keras raises many types for unloadable files
        raise runs.RunError(f"cannot load the model {path}: {err}. A model with layers of its own needs "
                            "--custom-objects FILE.py, the file that defines and registers them.") from None


def test_split_images(dataset: str, data_dir, num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of `num_images` images of a data set's test split (sorted by index)."""
    _, (x, y) = datasets.load_dataset(dataset, data_dir)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(x))[:num_images])
    return x[chosen], y[chosen]


def evaluate_file(path, images: tuple, source: str, attacks, budget: dict, out, epsilon: float, *,
                  seed: int = 0, name: str | None = None, reuse: bool = False) -> dict:
    """Evaluates the model in `path` on `images` = (x, y), named `source` (a data set or a file) in the results.

    Writes `<out>/<name>.json` (default name: the file's stem); with `reuse`,
    an earlier result for the same model file (by size and time), images,
    attacks, budget, ε and seed is read back. Returns the record.
    """
    path, out = Path(path), Path(out)
    name = name or path.stem
    stat = path.stat()
    request = {"attacks": list(attacks), "budget": budget, "epsilon": epsilon, "seed": seed, "model": str(path),
               "model_file": [stat.st_size, stat.st_mtime_ns], "data": source, "n_images": len(images[0])}
    reused = runs.reused_record(out / f"{name}.json", request, attacks) if reuse else None
    if reused is not None:
        print(f"== {path}: evaluated earlier with the same budget, read back from {out / f'{name}.json'}")
        return reused
    model = load_model_file(path)
    x, y = images
    runs.check_model_inputs(model, x, y, f"{source} images")
    print(f"== {path}: {len(x)} images of {source}, ε = {epsilon:.4g}")
    about = {"dataset": source, "method": name, "pnil": find_pnil(model) is not None, "run": str(path),
             "n_train": 1, "n_test": 1, "fold": 0}
    return runs.evaluate_model(model, x, y, epsilon, attacks, budget, out, name, about, request, seed=seed)
