"""Loading a user's model file: `.keras` archives and legacy `.h5`/`.hdf5` files, of any kind of Keras model.

`keras-pnil-evaluate` attacks one tensor of class scores per image. A user's
model may be functional, Sequential or subclassed, may have several outputs,
and may know its input shape only once it has been called; this module turns
each into a model returning that one tensor, or says in one line what is
missing. Keras' safe mode stays on: a file cannot run code of its own, so a
model with layers of its own loads only after the Python file that defines
and registers them has been imported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Keras' own messages can hold a whole layer configuration; one line of the error is kept to this length.
_MAX_DETAIL = 400


class ModelFileError(ValueError):
    """A model file that cannot be used: missing, of another format, unloadable, or with an unclear output."""


def check_model_file(path) -> None:
    """Raises a ModelFileError unless `path` is a Keras archive (`.keras`, a zip file) or an HDF5 file (`.h5`, `.hdf5`).

    Example:
        >>> check_model_file("runs/mnist/model.keras")  # doctest: +SKIP
        >>> check_model_file("notes.txt")  # doctest: +SKIP
        Traceback (most recent call last):
        ModelFileError: notes.txt is not a Keras model file: expected a .keras, .h5 or .hdf5 file
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix not in MODEL_SUFFIXES or not path.is_file():
        raise ModelFileError(f"{path} is not a Keras model file: expected a .keras, .h5 or .hdf5 file")
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"{path} is not a Keras model file (a .keras zip archive): "
                                 "truncated or another format")
        return
    with path.open("rb") as file:
        signature = file.read(len(HDF5_SIGNATURE))
    if signature != HDF5_SIGNATURE:
        raise ModelFileError(f"{path} is not an HDF5 model file ({path.suffix} files start with the HDF5 "
                             "signature): truncated or another format")


def load_model(path, *, output: str | int | None = None) -> keras.Model:
    """The model in the file `path`, returning one tensor: its only output, or the one named by `output`.

    Loads without the training configuration (`compile=False`: an evaluation
    needs none, and a loss or optimizer of the user's own would otherwise stop
    the load) and with Keras' safe mode on. A model with several outputs
    needs `output`: a name (a functional model's output layer name or a dict
    output's key) or an index (also given as a string, e.g. `"0"`). The chosen
    output shares the model's layers and weights, so random layers stay random.

    Example:
        >>> model = load_model("resnet.h5")  # doctest: +SKIP
        >>> model = load_model("two_heads.keras", output="logits")  # doctest: +SKIP
    """
    path = Path(path)
    check_model_file(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for unloadable files and unknown layers
        raise ModelFileError(f"cannot load the model {path}: {_one_line(err)}. A model with layers of its own "
                             "needs the Python file that defines and registers them: import it first.") from None
    return select_output(model, output)


def select_output(model: keras.Model, output: str | int | None = None) -> keras.Model:
    """`model` if it has one output, else a model returning its output `output` (see `load_model`).

    Example:
        >>> inputs = keras.Input((8, 8, 1))
        >>> features = keras.layers.Flatten()(inputs)
        >>> logits = keras.layers.Dense(10, name="logits")(features)
        >>> two = keras.Model(inputs, [logits, keras.layers.Dense(4, name="aux")(features)])
        >>> select_output(two, "logits").output_shape
        (None, 10)
    """
    outputs = _outputs(model)
    if outputs is None:  # a subclassed model never built: its outputs are known only when it runs
        return model if output is None else OutputSelector(model, output)
    kind, keys = outputs
    if kind == "single":
        if output is None or output in (0, "0") or (keys and output == keys[0]):
            return model
        raise ModelFileError(f"model {model.name!r} has no output {output!r}: it has a single output "
                             f"{_listing(keys) if keys else ''}".rstrip())
    if output is None:
        if len(keys) > 1:
            raise ModelFileError(f"model {model.name!r} has {len(keys)} outputs ({_listing(keys)}): choose its "
                                 "logits output, the one giving the class scores before any softmax.")
        output = keys[0]  # a one-element list or dict: its element
    key = _resolve(model, output, keys, by_position=kind == "functional")
    if kind == "functional":
        return keras.Model(model.input, model.outputs[keys.index(key)], name=model.name)
    if kind == "functional dict":
        return keras.Model(model.input, model.output[key], name=model.name)
    return OutputSelector(model, key)


class OutputSelector(keras.Model):
    """A model returning one output of a model with several: `model(x)[key]`, sharing its layers and weights.

    It wraps a model loaded for an evaluation and is not meant to be saved:
    save the model itself.

    Example:
        >>> logits_only = OutputSelector(model, "logits")  # doctest: +SKIP
        >>> logits_only(images).shape  # doctest: +SKIP
        TensorShape([32, 10])
    """

    def __init__(self, model: keras.Model, key: str | int, **kwargs):
        kwargs.setdefault("name", f"{model.name}_{key}")
        super().__init__(**kwargs)
        self.inner = model
        self.key = key

    def call(self, x, training=None):
        outputs = self.inner(x, training=training)
        if isinstance(outputs, dict):
            keys = list(outputs)
        elif isinstance(outputs, (list, tuple)):
            keys = list(range(len(outputs)))
        else:
            raise ModelFileError(f"model {self.inner.name!r} has a single output: no output {self.key!r} to choose")
        return outputs[_resolve(self.inner, self.key, keys)]


def input_shape(model: keras.Model, x=None) -> tuple:
    """The shape of one input image of `model` (entries may be None where the model takes any size).

    A functional or Sequential model states it; a subclassed model is built by
    calling it on `x[:1]` (the shape is then `x.shape[1:]`), or else answers
    with the shape it was built for before it was saved.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        >>> input_shape(model)
        (8, 8, 1)
        >>> input_shape(subclassed_model, np.zeros((5, 8, 8, 1), "float32"))  # doctest: +SKIP
        (8, 8, 1)
    """
    static = _static_input_shape(model)
    if static is not None:
        return static
    if x is not None:
        _call(model, x[:1])
        return tuple(int(n) for n in x.shape[1:])
    built = _built_input_shape(model)
    if built is not None:
        return built
    raise ModelFileError(f"model {model.name!r} has no known input shape (a subclassed model never built): "
                         "pass images to build it")


def output_width(model: keras.Model, x=None) -> int:
    """The number of classes of `model`: the width of its output, stated or from one call on `x[:1]`.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        >>> output_width(model)
        10
    """
    outputs = _static_outputs(model)
    if outputs is not None:
        if len(outputs) > 1:
            select_output(model)  # raises the error listing the outputs
        if outputs[0].shape[-1] is not None:
            return int(outputs[0].shape[-1])
    if x is not None:
        images = x[:1]
    else:
        shape = _built_input_shape(model)
        if shape is None or None in shape:
            raise ModelFileError(f"model {model.name!r} has no known output width (a subclassed model never "
                                 "built): pass images to build it")
        images = np.zeros((1, *shape), "float32")
    result = _call(model, images)
    if isinstance(result, (dict, list, tuple)):
        select_output(model)  # raises the error listing the outputs
    return int(result.shape[-1])


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL - 1] + "…"


def _listing(keys) -> str:
    return ", ".join(repr(key) for key in keys)


def _static_outputs(model: keras.Model) -> list | None:
    """The output tensors a functional or Sequential model states; None for a subclassed model."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):  # subclassed models have none; an unbuilt Sequential raises
        return None
    return list(outputs) if outputs else None


def _static_input_shape(model: keras.Model) -> tuple | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    if len(inputs) > 1:
        raise ModelFileError(f"model {model.name!r} takes {len(inputs)} inputs; keras-pnil attacks models "
                             "of one image input")
    return tuple(inputs[0].shape[1:])


def _built_input_shape(model: keras.Model) -> tuple | None:
    """The image shape a subclassed model was built for (kept in its file), or None."""
    if isinstance(model, OutputSelector):
        return _static_input_shape(model.inner) or _built_input_shape(model.inner)
    try:
        shape = (model.get_build_config() or {}).get("input_shape")
    except Exception:  # a user's model may override get_build_config with anything
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) < 2 or not all(
            n is None or isinstance(n, int) for n in shape):
        return None  # several inputs, or not a shape
    return tuple(shape[1:])


def _call(model: keras.Model, images):
    try:
        return model(images, training=False)
    except ModelFileError:
        raise
    except Exception as err:  # the user's code may raise anything; say which model and which images
        raise ModelFileError(f"model {model.name!r} cannot take images shaped {tuple(images.shape[1:])}: "
                             f"{_one_line(err)}") from None


def _outputs(model: keras.Model) -> tuple[str, list] | None:
    """How `model` answers, as (kind, keys): ("functional", output names), ("functional dict", keys),
    ("dict", keys), ("list", indices) or ("single", its output's name if known).

    None for a subclassed model whose input shape is unknown, so that it cannot
    be called to find out.
    """
    static = _static_outputs(model)
    if static is not None:
        struct = getattr(model, "output", None)
        if isinstance(struct, dict):
            return "functional dict", list(struct)
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(static):
            names = [_tensor_name(t) for t in static]
        if len(static) == 1:  # a tensor, or a list of one that Keras' call unpacks
            return "single", names
        return "functional", names
    shape = _built_input_shape(model)
    if shape is None or None in shape:
        return None
    result = _call(model, np.zeros((1, *shape), "float32"))
    if isinstance(result, dict):
        return "dict", list(result)
    if isinstance(result, (list, tuple)):
        return "list", list(range(len(result)))
    return "single", []


def _tensor_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history[0].name if history else tensor.name


def _resolve(model: keras.Model, output: str | int, keys: list, *, by_position: bool = False) -> str | int:
    """The key among `keys` that `output` names: the key itself, or an index (also as a string) into a list's
    outputs, or with `by_position` into a functional model's outputs, named by `keys`."""
    if output in keys and not isinstance(output, bool):
        return output
    if isinstance(output, str) and output.lstrip("-").isdigit() and all(isinstance(k, int) for k in keys):
        index = int(output)
        if index in keys:
            return index
    if by_position and isinstance(output, str) and output.isdigit():
        output = int(output)
    if by_position and isinstance(output, int) and not isinstance(output, bool) and 0 <= output < len(keys):
        return keys[output]
    raise ModelFileError(f"model {model.name!r} has no output {output!r}; its outputs are {_listing(keys)}")
