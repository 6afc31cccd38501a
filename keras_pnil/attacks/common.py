"""What every attack shares: argument checks, a local random generator, batching and the L∞ projection."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.eot import EOT
from keras_pnil.validation import check_count, check_epsilon, check_images, check_same_length

DEFAULT_BATCH_SIZE = 256  # images per batch; the model sees batch × EOT draws at once


def check_attack_args(x, y, epsilon: float, batch_size: int) -> float:
    """Validates the arguments every attack takes; returns ε as a float."""
    check_images(x, "images to attack")
    check_same_length(x, y)
    check_count("batch_size", batch_size)
    return check_epsilon(epsilon)


def generator(seed: int | None) -> tf.random.Generator:
    """The attack's own random generator: it never reads or resets TensorFlow's global seed."""
    if seed is None:
        return tf.random.Generator.from_non_deterministic_state()
    return tf.random.Generator.from_seed(check_count("seed", seed, minimum=0))


def run_batched(attack, x, y, batch_size: int) -> np.ndarray:
    """Applies a compiled attack `(x, y) -> x_adv` to `x` in batches of `batch_size` images."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    parts = [attack(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size])).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else x.copy()


def per_image(mask, x):
    """A per-image mask or value shaped to broadcast over the pixels of `x`."""
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones(tf.rank(x) - 1, tf.int32)], 0))


def project(z, x, epsilon: float):
    """`z` moved into the L∞ ball of radius ε around `x` and into [0, 1]."""
    return tf.clip_by_value(tf.clip_by_value(z, x - epsilon, x + epsilon), 0.0, 1.0)


def classified_right(model_fn: EOT, x, y, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Per image: does the EOT prediction (mean log-probabilities over the draws) name the label?"""
    predictions = [np.argmax(model_fn(tf.constant(x[i:i + batch_size])).numpy(), -1)
                   for i in range(0, len(x), batch_size)]
    return np.concatenate(predictions) == y if predictions else np.zeros(0, bool)
