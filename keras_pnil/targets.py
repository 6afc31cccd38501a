"""What `keras-pnil-evaluate` evaluates: run directories of `keras-pnil-train`, and any Keras model file.

A model file (`.keras`, `.h5`) carries no training configuration, so the
images come from the command (a data set's test split or the user's own
`.npz` arrays) and ε must be given. Models with the user's own layers load
after the files that define them are imported; Keras' safe mode stays on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from keras_pnil import data as datasets
from keras_pnil import jobs, loading, runs
from keras_pnil.layers import find_pnil
from keras_pnil.plan import PlanRequest


def check_target(path) -> None:
    """Raises a RunError (or ModelFileError) unless `path` is a finished run directory or a Keras model file
    (or a folder holding only `model.keras`)."""
    path = Path(path)
    if not is_model_file(path):
        runs.check_run(path)
    elif path.is_dir() or path.suffix in loading.MODEL_SUFFIXES:
        loading.check_model_file(model_path(path))
    else:
        raise runs.RunError(f"{path} is neither a run directory of keras-pnil-train nor a Keras model file "
                            f"({', '.join(loading.MODEL_SUFFIXES)})")


def is_model_file(path) -> bool:
    """Whether the target `path` is a model file, or a folder holding only `model.keras` (else a run)."""
    path = Path(path)
    return not path.is_dir() or ((path / runs.MODEL).exists() and not (path / runs.CONFIG).exists())


def model_path(path) -> Path:
    """The model file of a target: the file itself, or the `model.keras` of a folder or run directory."""
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


def test_split_images(dataset: str, data_dir, num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of `num_images` images of a data set's test split (sorted by index); only the test
    split is read."""
    x, y = datasets.load_split(dataset, "test", data_dir)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(x))[:num_images])
    return x[chosen], y[chosen]


def file_job(path, images: tuple, source: str, request: PlanRequest, epsilon: float, *, output=None,
             name: str | None = None, norm: str = "linf", bounds=(0.0, 1.0)) -> jobs.Job:
    """The evaluation job of the model in `path` on `images` = (x, y), named `source` (a data set or a file),
    in the ε-ball of `norm` inside the model's input range `bounds`.

    Its record goes to `<out>/<name>.json` (default name: the file's stem).
    """
    path = Path(path)
    try:
        model = loading.load_model(path)
    except loading.ModelFileError as err:  # `output` names the logits of the models that have several outputs
        if output is None or " outputs (" not in str(err):
            raise
        model = loading.load_model(path, output=output)
    x, y = images
    loading.input_shape(model, np.asarray(x[:1], np.float32))  # builds a subclassed model on the data's shape
    name = name or path.stem
    about = {"kind": "model", "dataset": source, "method": name, "pnil": find_pnil(model) is not None,
             "run": str(path), "n_train": 1, "n_test": 1, "fold": 0}
    return jobs.prepare(name, model, x, y, request, epsilon, about, norm=norm, bounds=bounds)
