"""Argument checks shared by the layers, attacks, training and commands.

Each raises a `ValueError` that names the argument, quotes the bad value and
says what is allowed, so a command can print it as one line.
"""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np


def check_count(name: str, value, minimum: int = 1) -> int:
    """An integer >= `minimum` (booleans are not counts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_positive(name: str, value) -> float:
    """A number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}.")
    return float(value)


def check_bounds(bounds) -> tuple[float, float]:
    """The range (lo, hi) of a model's inputs: two finite numbers with lo < hi."""
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be two numbers (lo, hi), e.g. (0, 255); got {bounds!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise ValueError(f"bounds must be finite with lo < hi, e.g. (0, 255) or (-1, 1); got {bounds!r}.")
    return lo, hi


def _range(bounds) -> str:
    return f"pixels in [{bounds[0]:g}, {bounds[1]:g}]"


def check_epsilon(value, name: str = "epsilon", *, norm: str = "linf", bounds=(0.0, 1.0)) -> float:
    """A radius in the units of the model's inputs: for L∞ a number in (0, hi - lo); for L2 and L1 any
    positive finite number (an L2 radius may exceed the pixel range)."""
    lo, hi = check_bounds(bounds)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a number; got {value!r}.")
    if norm == "linf" and not 0.0 < value < hi - lo:
        raise ValueError(f"{name} must be a number in (0, {hi - lo:g}) for {_range((lo, hi))} (an L∞ radius "
                         f"below the input range); got {value!r}.")
    if not value > 0.0:
        raise ValueError(f"{name} must be a positive number (an {norm.upper()} radius in the units of the "
                         f"model's inputs); got {value!r}.")
    return float(value)


def parse_radius(text) -> float:
    """'8/255', '0.5', '2' (or a number) → a positive float (checked against a norm by `check_epsilon`)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        try:
            value = float(Fraction(str(text)))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"epsilon must be a number or a fraction like 8/255; got {text!r}.") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"epsilon must be a positive number; got {text!r}.")
    return value


def parse_epsilon(text) -> float:
    """'8/255', '0.03' (or a number) → a float in (0, 1): an L∞ radius for pixels in [0, 1]."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return check_epsilon(text)
    try:
        value = float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"epsilon must be a number or a fraction like 8/255; got {text!r}.") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"epsilon must lie in (0, 1) for pixels in [0, 1]; got {text!r}.")
    return value


def check_images(x, what: str = "inputs", bounds=(0.0, 1.0)) -> None:
    """A batch (rank >= 2) with every value in the model's input range `bounds` (default [0, 1])."""
    x = np.asarray(x)
    lo, hi = bounds
    if x.ndim < 2:
        raise ValueError(f"{what} must be a batch (rank >= 2); got shape {x.shape}.")
    if x.size and (x.min() < lo or x.max() > hi):
        fix = ("Scale images to [0, 1] (e.g. divide uint8 pixels by 255), or give the model's input range "
               "as bounds=(lo, hi)." if (lo, hi) == (0.0, 1.0)
               else "Scale the images to the model's input range, or give the range they are in as bounds=(lo, hi).")
        raise ValueError(f"{what} must lie in [{lo:g}, {hi:g}]; found values in [{x.min():.4g}, {x.max():.4g}]. "
                         + fix)


def check_same_length(x, y) -> None:
    """As many labels as images."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} images, {len(y)} labels.")


def check_choice(name: str, value, choices) -> None:
    """One of `choices`, named in the message."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {sorted(choices)}.")


# The input boundary of the public functions: images and labels checked against the model they are for.
# (Here, below the attacks, so that every attack can call it; `keras_pnil.inputs` is its public home.)

_ONE_LOGIT_MODEL = "keras.Model(model.inputs, model.outputs[0])"


def _model_name(model) -> str:
    return getattr(model, "name", None) or type(model).__name__


def _shape(shape) -> str:
    """A shape as users write it: (28, 28, 1), None for an open axis."""
    return str(tuple(None if d is None else int(d) for d in shape))


def _first_line(error: BaseException) -> str:
    """The first informative line of an exception (Keras wraps the real one in a preamble and colour codes)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return lines[0] if lines else type(error).__name__


def _static_io(model) -> tuple[list | None, list | None]:
    """The model's symbolic inputs and outputs, or (None, None) when it has none (a subclassed model)."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None, None
    return (list(inputs) if inputs else None), (list(outputs) if outputs else None)


def _multi_output_error(model, names) -> ValueError:
    return ValueError(f"model {_model_name(model)!r} has {len(names)} outputs ({', '.join(map(str, names))}); "
                      f"pass a model with one output of logits, e.g. {_ONE_LOGIT_MODEL}.")


def _check_output_shape(model, shape) -> int | None:
    """The number of classes of a (batch, classes) output shape; an error for any other shape."""
    if len(shape) != 2:
        raise ValueError(f"model {_model_name(model)!r} outputs shape {_shape(shape)}; pass a model with one "
                         "vector of logits per image, shaped (batch, classes).")
    return None if shape[-1] is None else int(shape[-1])


def _check_images_array(x, what: str, bounds=(0.0, 1.0)) -> np.ndarray:
    """`x` as a float32 batch of at least one image, every value finite and within `bounds`."""
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{what} must be an array of numbers; got {type(x).__name__} ({err}).") from None
    if x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"{what} must not be empty; got an array shaped {x.shape}. Pass at least one image.")
    if x.ndim < 2:
        raise ValueError(f"{what} must be a batch (rank >= 2); got shape {x.shape}.")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be an array of numbers; got dtype {x.dtype}.")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            bad = finite.size - int(finite.sum())
            nan = int(np.isnan(x).sum())
            first = int(np.argmin(finite.reshape(len(x), -1).all(axis=1)))
            raise ValueError(f"{what} must be finite; found {nan} NaN and {bad - nan} infinite values "
                             f"(first in image {first}). Replace or drop those images.")
    check_images(x, what, bounds)
    return x.astype(np.float32, copy=False)


def _check_model(model, x: np.ndarray, need_classes: bool) -> int | None:
    """Checks that `model` takes images shaped like `x`'s and has one output; returns its classes (if needed).

    Reads the model's static shapes; calls it once, on one image, only when
    they are unknown (a subclassed model).
    """
    name, inputs, outputs = _model_name(model), *_static_io(model)
    if inputs is not None and len(inputs) > 1:
        raise ValueError(f"model {name!r} takes {len(inputs)} inputs; pass a model with one input of images.")
    if outputs is not None and len(outputs) > 1:
        raise _multi_output_error(model, getattr(model, "output_names", None)
                                  or [f"output {i}" for i in range(len(outputs))])
    classes = None
    if outputs is not None:
        classes = _check_output_shape(model, tuple(outputs[0].shape))
    if inputs is not None:
        expected, got = tuple(inputs[0].shape)[1:], x.shape[1:]
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got, strict=True)):
            raise ValueError(f"model {name!r} cannot take images shaped {_shape(got)}: it takes images shaped "
                             f"{_shape(expected)}. Reshape the images, or pass a model built for them.")
        if classes is not None or not need_classes:
            return classes
    try:
        output = model(x[:1], training=False)
    except Exception as err:  # whatever the model raises, reported as the shape it was given
        raise ValueError(f"model {name!r} cannot take images shaped {_shape(x.shape[1:])}: "
                         f"{_first_line(err)}") from None
    if isinstance(output, dict):
        raise _multi_output_error(model, list(output))
    if isinstance(output, (list, tuple)):
        if len(output) != 1:
            raise _multi_output_error(model, [f"output {i}" for i in range(len(output))])
        output = output[0]
    return _check_output_shape(model, tuple(output.shape))


def _check_labels(y, n: int, classes: int | None, model) -> np.ndarray:
    """`y` as int64 class indices: shaped (n,), integral, in [0, classes)."""
    try:
        y = np.asarray(y)
    except (ValueError, TypeError) as err:
        raise ValueError(f"labels must be an array of class indices; got {type(y).__name__} ({err}).") from None
    if y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind in "biuf" and y.size and np.all((y == 0) | (y == 1)) \
            and np.all(y.sum(axis=1) == 1):
        raise ValueError(f"labels look one-hot (shape {y.shape}); pass integer class indices: y.argmax(-1).")
    if y.ndim != 1:
        hint = " Flatten them with y.reshape(-1)." if y.size == n and y.ndim > 1 else ""
        raise ValueError(f"labels must be a vector of class indices shaped ({n},); got shape {y.shape}.{hint}")
    check_same_length(range(n), y)
    if y.dtype.kind == "b":
        raise ValueError("labels must be integer class indices; got booleans (dtype bool).")
    if y.dtype.kind not in "iuf":
        raise ValueError(f"labels must be integer class indices; got dtype {y.dtype}.")
    if y.dtype.kind == "f":
        integral = np.isfinite(y) & (y == np.round(y))
        if not integral.all():
            first = int(np.argmin(integral))
            raise ValueError(f"labels must be integer class indices; got {y[first].item()!r} (label {first}).")
    inside = (y >= 0) if classes is None else (y >= 0) & (y < classes)
    if not inside.all():
        first = int(np.argmin(inside))
        allowed = "be >= 0" if classes is None else f"lie in [0, {classes})"
        which = "" if classes is None else f" for model {_model_name(model)!r}, which has {classes} classes"
        raise ValueError(f"labels must {allowed}{which}; got {y[first].item()!r} (label {first}).")
    return y.astype(np.int64)


def check_inputs(model, x, y=None, *, what: str = "images", bounds=(0.0, 1.0)
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks images (and labels) for `model`; returns them as float32 images and int64 labels.

    In this order: at least one image; a batch (rank >= 2); every value finite;
    values in `bounds` (default [0, 1]); a shape the model takes, with one output of logits;
    then labels shaped (N,) (not one-hot), one per image, integral (floats
    such as 3.0 are converted) and in [0, classes). Each failure is a
    `ValueError` of one line naming the problem and its fix. The checks are
    O(N) NumPy passes; the model is called, once and on one image, only when
    its input or output shape is not static (a subclassed model).

    Args:
        model: A Keras model with one output of logits.
        x: A batch of images in [0, 1].
        y: Integer labels, or None to check only the images.
        what: What the images are, in messages ("images to attack").
        bounds: The model's input range (lo, hi).

    Returns:
        `(x, y)`: `x` as a float32 array, `y` as an int64 array or None.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        >>> x, y = check_inputs(model, np.zeros((2, 8, 8, 1)), [3.0, 7])
        >>> x.dtype, y.tolist()
        (dtype('float32'), [3, 7])
    """
    x = _check_images_array(x, what, check_bounds(bounds))
    classes = _check_model(model, x, need_classes=y is not None)
    return x, (None if y is None else _check_labels(y, len(x), classes, model))
