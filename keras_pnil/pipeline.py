"""tf.data pipelines that keep the train step at one speed: tf.data's autotuning off.

With tf.data's autotuning on (its default), an epoch of a small network on this
project's 2-core CPU ran at one of two speeds: the full one, or a fixed ~21 ms
a step with both cores half idle (4,730 images/s against ~9,700 for Wong et al.'s
MNIST net at batch 100), chosen afresh each time an iterator is made, so per
epoch and per `fit` call. Turning autotuning off removed it in every epoch measured;
narrower settings (another autotune algorithm, a CPU budget of 1, no injected
prefetch, a fixed prefetch buffer) did not. docs/benchmarks.md has the
measurements. On in-memory images nothing is lost: there is nothing to tune.

`keras_pnil.data.make_dataset` builds its datasets with these options, and
`AdversarialModel.fit` applies them to array inputs (which it batches itself,
as Keras would) and to any dataset whose owner left autotuning unset.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf


def steady_options() -> tf.data.Options:
    """tf.data options with autotuning off.

    Example:
        >>> ds = tf.data.Dataset.range(4).with_options(steady_options())
        >>> ds.options().autotune.enabled
        False
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def steady(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with autotuning off, unless its owner set autotuning either way (then it is left as it is).

    Example:
        >>> steady(tf.data.Dataset.range(4)).options().autotune.enabled
        False
    """
    if dataset.options().autotune.enabled is not None:
        return dataset
    return dataset.with_options(steady_options())


def array_dataset(x, y, sample_weight=None, batch_size: int = 32, shuffle: bool = True) -> tf.data.Dataset:
    """Arrays as a steady dataset batched as Keras' `fit` batches them (reshuffled each epoch when `shuffle`).

    Only the indices pass through the shuffle; each batch is one gather from
    the arrays held in memory, as in Keras' own array adapter. The order
    draws from TensorFlow's global seed, which Keras' seeding utility sets,
    and is new each epoch.

    Example:
        >>> ds = array_dataset(np.zeros((5, 2), "float32"), np.arange(5), batch_size=2, shuffle=False)
        >>> [int(b[0].shape[0]) for b in ds]
        [2, 2, 1]
    """
    if tf.as_dtype(x.dtype).is_floating:
        x = tf.cast(x, keras.backend.floatx())  # as Keras' own adapter: float64 arrays train in float32
    arrays = tuple(tf.convert_to_tensor(a) for a in ((x, y) if sample_weight is None else (x, y, sample_weight)))
    count = int(arrays[0].shape[0])
    order = tf.data.Dataset.range(count)
    if shuffle:
        # A shuffle with its own seed state, so each epoch's order differs even under a global seed (a random
        # op inside a dataset function would replay the same permutation every epoch).
        order = order.shuffle(count, reshuffle_each_iteration=True)
    dataset = order.batch(batch_size)
    # The next batch is gathered while the step runs (a fixed buffer: it is autotuning that was slow).
    return steady(dataset.map(lambda indices: tuple(tf.gather(a, indices) for a in arrays)).prefetch(2))


_FIT = inspect.signature(keras.Model.fit)


def _is_arrays(value) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor))


def steady_fit_arguments(model: keras.Model, *args, **kwargs) -> dict:
    """`keras.Model.fit`'s arguments with array and dataset inputs made steady, as keyword arguments.

    Array inputs become a dataset batched and shuffled as Keras would (batch
    32 by default, the last `validation_split` of the arrays held out first);
    `validation_data` arrays become an unshuffled one. Datasets get
    `steady`. Other inputs (generators, `PyDataset`s, several inputs, a
    `steps_per_epoch` over arrays, `shuffle="batch"`) are left to Keras.

    Example:
        >>> kwargs = steady_fit_arguments(model, x, y, batch_size=100)  # doctest: +SKIP
        >>> model.fit(**kwargs)  # doctest: +SKIP
    """
    bound = _FIT.bind(model, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop("self")
    arguments.update(arguments.pop("kwargs", {}))
    x, y = arguments.get("x"), arguments.get("y")
    validation_size = arguments.get("validation_batch_size") or arguments.get("batch_size") or 32
    if isinstance(x, tf.data.Dataset):
        arguments["x"] = steady(x)
        arguments.setdefault("shuffle", False)  # a dataset orders itself; Keras would warn that it ignores the flag
    elif (_is_arrays(x) and _is_arrays(y) and arguments.get("steps_per_epoch") is None
          and arguments.get("shuffle", True) != "batch"):
        weights = arguments.get("sample_weight")
        split = arguments.get("validation_split") or 0.0
        if split and arguments.get("validation_data") is None:
            keep = int(np.floor(len(x) * (1.0 - split)))  # Keras holds out the last fraction, unshuffled
            held = (x[keep:], y[keep:]) if weights is None else (x[keep:], y[keep:], weights[keep:])
            x, y = x[:keep], y[:keep]
            weights = None if weights is None else weights[:keep]
            arguments["validation_data"] = held
        batch_size = arguments.get("batch_size") or 32
        arguments["x"] = array_dataset(x, y, weights, batch_size, bool(arguments.get("shuffle", True)))
        arguments.update(y=None, sample_weight=None, batch_size=None, validation_split=0.0, shuffle=False)
    validation = arguments.get("validation_data")
    if isinstance(validation, tf.data.Dataset):
        arguments["validation_data"] = steady(validation)
    elif (isinstance(validation, (list, tuple)) and len(validation) in (2, 3)
          and all(_is_arrays(v) for v in validation)):
        arguments["validation_data"] = array_dataset(*validation, batch_size=validation_size, shuffle=False)
        arguments["validation_batch_size"] = None
    return arguments
