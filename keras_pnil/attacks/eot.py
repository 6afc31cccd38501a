"""Expectation over Transformation: input gradients and a `model_fn` averaged over a model's noise draws.

Every attack is written against a `model_fn` (inputs → scores), after
CleverHans. `EOT` turns a model with random layers into such a `model_fn`, so
every attack gains EOT without knowing about it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.validation import check_count, check_inputs

# EOT draws used when an attack is given `eot_samples=None` and the model is
# random: AutoAttack's `rand` version uses 20.
DEFAULT_EOT_SAMPLES = 20


def tile(x, samples: int):
    """`samples` copies of the batch, stacked on the batch axis (sample-major)."""
    return tf.tile(x, tf.concat([[samples], tf.ones(tf.rank(x) - 1, tf.int32)], 0))


def cross_entropy_sum(y, logits):
    """Summed (not averaged) cross-entropy: its input gradient is per-example."""
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=tf.cast(logits, tf.float32)))


def input_gradient(model_fn, x, y, samples: int = 1):
    """∇x of the cross-entropy summed over `samples` independent draws of the model's noise.

    The batch is tiled `samples` times and run in one pass, so L gradient
    samples cost one (larger) forward-backward pass, not L Python iterations.
    """
    xt, yt = (x, y) if samples == 1 else (tile(x, samples), tile(y, samples))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = cross_entropy_sum(yt, model_fn(xt))
    grad = tape.gradient(loss, xt)
    if samples > 1:
        grad = tf.reduce_sum(tf.reshape(grad, tf.concat([[samples], tf.shape(x)], 0)), 0)
    return grad


def negative_log_likelihood(labels, logits):
    """Per-example -log p(label) for log-probability outputs (such as `EOT`'s)."""
    return -tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)


@dataclass(frozen=True)
class Behaviour:
    """What two calls of a model on the same images show.

    Attributes:
        random: The two outputs differ: the model is random at inference (a
            PNIL, the user's own noise layer, a randomized input transform),
            whatever its layers are called.
        probabilities: Every output row is non-negative and sums to 1: the
            model ends in a softmax, and attacks must use its logarithm.
    """

    random: bool
    probabilities: bool


PROBE_IMAGES = 8


def probe(model: keras.Model, x=None, bounds=(0.0, 1.0)) -> Behaviour:
    """Calls `model` twice on the same batch (the first images of `x`, else uniform noise) and compares.

    Judged by behaviour, not by layer type, so a random defence the library
    has never heard of is still attacked with EOT. Images given are checked
    first (see `keras_pnil.inputs.check_inputs`), within the model's input range `bounds`.
    """
    if x is not None:
        x, _ = check_inputs(model, x, what="images to probe with", bounds=bounds)
    return _behaviour(model, x)


def _behaviour(model: keras.Model, x=None) -> Behaviour:
    """`probe` without the input check: for attacks, which checked their images at their entry."""
    if x is None or len(x) == 0:
        shape = tuple(model.input_shape[1:])
        if None in shape:
            raise ValueError(f"Model {model.name!r} has input shape {model.input_shape}: pass images to probe it.")
        x = np.random.default_rng(0).uniform(size=(PROBE_IMAGES, *shape)).astype(np.float32)
    batch = tf.constant(np.asarray(x[:PROBE_IMAGES], np.float32))
    first, second = (tf.cast(model(batch, training=False), tf.float32).numpy() for _ in range(2))
    random = bool(np.max(np.abs(first - second)) > 1e-5 * (1.0 + np.max(np.abs(first))))
    rows = first.sum(-1)
    probabilities = bool(first.min() >= 0 and np.allclose(rows, 1.0, atol=1e-3))
    return Behaviour(random, probabilities)


def resolve_eot_samples(model: keras.Model, eot_samples: int | None, random: bool) -> int:
    """The number of EOT draws to use on `model`, `random` or not (see `probe`).

    `None` means `DEFAULT_EOT_SAMPLES` on a random model and 1 on a
    deterministic one; more than one draw on a deterministic model only
    repeats the same computation, so it is reduced to 1 with a warning.
    """
    if eot_samples is None:
        return DEFAULT_EOT_SAMPLES if random else 1
    check_count("eot_samples", eot_samples)
    if eot_samples > 1 and not random:
        warnings.warn(f"Model {model.name!r} gives the same output on every call: eot_samples={eot_samples} "
                      "is pointless, using 1.", stacklevel=3)
        return 1
    return eot_samples


_NOTICED = "_keras_pnil_probabilities_noticed"


def first_notice_of_probabilities(model: keras.Model) -> bool:
    """True the first time it is asked about `model`: the probability outputs are said once per model."""
    if getattr(model, _NOTICED, False):
        return False
    object.__setattr__(model, _NOTICED, True)  # past Keras' attribute tracking, like the attack-graph cache
    return True


class EOT:
    """A `model_fn` for attacks on random models: Expectation over Transformation.

    Calling it returns the log-probabilities averaged over `samples` noise
    draws, computed in one pass over the batch tiled `samples` times. The
    negative log-likelihood of the true class under this output is exactly the
    mean cross-entropy over draws, so its gradient is the EOT gradient of
    Athalye et al.; `draws` gives the per-draw logits for losses that need them.

    A model whose outputs are probabilities (see `probe`) is attacked through
    their logarithms, which are logits up to a constant, with a warning.

    Args:
        model: A Keras model that outputs logits (or probabilities).
        samples: Noise draws per evaluation (`None`: see `resolve_eot_samples`).
        images: Images to probe the model with (default: uniform noise).
    """

    def __init__(self, model: keras.Model, samples: int | None = None, images=None):
        behaviour = _behaviour(model, images)
        self.model, self.random, self.probabilities = model, behaviour.random, behaviour.probabilities
        self.samples = resolve_eot_samples(model, samples, behaviour.random)
        if self.probabilities and first_notice_of_probabilities(model):
            warnings.warn(f"Model {model.name!r} outputs probabilities (rows sum to 1), not logits: attacking "
                          "their logarithms. Models should output logits.", stacklevel=3)

    def draws(self, x):
        """Logits of each draw, shaped [samples, batch, classes]."""
        outputs = tf.cast(self.model(tile(x, self.samples), training=False), tf.float32)
        if self.probabilities:
            outputs = tf.math.log(tf.maximum(outputs, 1e-30))  # log(0) would make every loss infinite
        return tf.reshape(outputs, [self.samples, tf.shape(x)[0], -1])

    def __call__(self, x):
        return tf.reduce_mean(tf.nn.log_softmax(self.draws(x)), axis=0)
