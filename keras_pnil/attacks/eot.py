"""Expectation over Transformation: input gradients and a `model_fn` averaged over a model's noise draws.

Every attack is written against a `model_fn` (inputs → scores), after
CleverHans. `EOT` turns a model with random layers into such a `model_fn`, so
every attack gains EOT without knowing about it.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from keras_pnil.layers import has_random_layer
from keras_pnil.validation import check_count

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


def resolve_eot_samples(model: keras.Model, eot_samples: int | None) -> int:
    """The number of EOT draws to use on `model`.

    `None` means `DEFAULT_EOT_SAMPLES` on a random model and 1 on a
    deterministic one; more than one draw on a deterministic model only
    repeats the same computation, so it is reduced to 1 with a warning.
    """
    random = has_random_layer(model)
    if eot_samples is None:
        return DEFAULT_EOT_SAMPLES if random else 1
    check_count("eot_samples", eot_samples)
    if eot_samples > 1 and not random:
        warnings.warn(f"Model {model.name!r} has no random layer: eot_samples={eot_samples} "
                      "is pointless, using 1.", stacklevel=3)
        return 1
    return eot_samples


class EOT:
    """A `model_fn` for attacks on random models: Expectation over Transformation.

    Calling it returns the log-probabilities averaged over `samples` noise
    draws, computed in one pass over the batch tiled `samples` times. The
    negative log-likelihood of the true class under this output is exactly the
    mean cross-entropy over draws, so its gradient is the EOT gradient of
    Athalye et al.; `draws` gives the per-draw logits for losses that need them.

    Args:
        model: A Keras model that outputs logits.
        samples: Noise draws per evaluation (`None`: see `resolve_eot_samples`).
    """

    def __init__(self, model: keras.Model, samples: int | None = None):
        self.model, self.samples = model, resolve_eot_samples(model, samples)

    def draws(self, x):
        """Logits of each draw, shaped [samples, batch, classes]."""
        logits = tf.cast(self.model(tile(x, self.samples), training=False), tf.float32)
        return tf.reshape(logits, [self.samples, tf.shape(x)[0], -1])

    def __call__(self, x):
        return tf.reduce_mean(tf.nn.log_softmax(self.draws(x)), axis=0)
