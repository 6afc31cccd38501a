"""The Square attack (Andriushchenko et al., 2020): L∞, untargeted, score-based and gradient-free."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import DEFAULT_BATCH_SIZE, batch_signature, check_attack_args, compiled, run_batched
from keras_pnil.attacks.eot import EOT
from keras_pnil.validation import check_count


def _square_fraction(p_init: float, query, queries: int):
    """The paper's schedule: the square's pixel fraction halves at fixed fractions of a 10,000-query run."""
    boundaries = tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], tf.float32)
    halvings = tf.reduce_sum(tf.cast(tf.cast(query, tf.float32) * 10000.0 / queries > boundaries, tf.float32))
    return p_init / tf.pow(2.0, halvings)


def _margin(model_fn: EOT):
    """log p(y) - max other log p, of the EOT mean log-probabilities: > 0 while the image is classified right."""
    # Not SPSA's loss (per-draw logit margins, averaged): tried, and on a very noisy model it lost the
    # whole benefit of EOT for Square (accuracy 0.745 with 8 draws vs 0.729 with 1; 0.56 vs 0.66 here).
    def margin(x, y):
        logp = model_fn(x)
        true = tf.gather(logp, y, batch_dims=1)
        others = tf.where(tf.one_hot(y, tf.shape(logp)[-1]) > 0, -np.inf, logp)
        return true - tf.reduce_max(others, axis=-1)

    return margin


def _square_graph(model_fn: EOT, epsilon: float, queries: int, p_init: float, rng: tf.random.Generator,
                  signature: list):
    margin_of = _margin(model_fn)

    def signs(shape):
        return tf.sign(rng.uniform(shape, -1.0, 1.0))

    @tf.function(input_signature=signature)
    def attack(x, y):
        batch, height, width = tf.unstack(tf.shape(x)[:3])
        channels = x.shape[-1]  # static, so the loop keeps x_best's shape
        # Start: vertical stripes of ±ε, one sign per column and channel.
        x_best = tf.clip_by_value(x + epsilon * signs([batch, 1, width, channels]), 0.0, 1.0)
        margin = margin_of(x_best, y)
        rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]
        for query in tf.range(1, queries):
            if tf.reduce_all(margin <= 0.0):
                break
            side = tf.cast(tf.round(tf.sqrt(_square_fraction(p_init, query, queries)
                                            * tf.cast(height * width, tf.float32))), tf.int32)
            side = tf.clip_by_value(side, 1, height - 1)
            top = rng.uniform([batch, 1, 1], 0, height - side + 1, tf.int32)
            left = rng.uniform([batch, 1, 1], 0, width - side + 1, tf.int32)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            # A fresh ±ε per channel over the square, for the images not yet fooled.
            candidate = tf.where(window[..., None], epsilon * signs([batch, 1, 1, channels]), x_best - x)
            x_new = tf.clip_by_value(x + candidate, 0.0, 1.0)
            margin_new = margin_of(x_new, y)
            accept = (margin_new < margin) & (margin > 0.0)
            # Static shapes kept for the loop (a batch of 1 would otherwise broadcast to None).
            x_best = tf.ensure_shape(tf.where(accept[:, None, None, None], x_new, x_best), x.shape)
            margin = tf.ensure_shape(tf.where(accept, margin_new, margin), margin.shape)
        return x_best

    return attack


def square(model, x, y, epsilon: float, *, queries: int = 5000, p_init: float = 0.8,
           eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0) -> np.ndarray:
    """The Square attack, with every score the EOT mean over the model's noise draws.

    Random ±ε vertical stripes to start, then one random square window per
    query (its side shrinking on the paper's schedule from `p_init` of the
    image) set to a fresh ±ε per channel, kept only if it lowers the margin.
    On a random model the greedy acceptance then follows the expected score,
    not one draw's luck. Images already misclassified stop moving; a batch
    stops when all are.

    Args:
        model: A Keras model that outputs logits, on NHWC images.
        x, y: Images in [0, 1] and integer labels.
        epsilon: L∞ radius.
        queries: Score queries per image (AutoAttack: 5000).
        p_init: Initial fraction of the image a square covers.
        eot_samples: Noise draws per score (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's own random generator.

    Returns:
        The adversarial images, a NumPy array shaped like `x`.
    """
    queries = check_count("queries", queries)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must lie in (0, 1]; got {p_init!r}.")
    if np.ndim(x) != 4:
        raise ValueError(f"square expects NHWC image batches; got shape {np.shape(x)}.")
    x, y, epsilon = check_attack_args(model, x, y, epsilon, batch_size)
    model_fn = EOT(model, eot_samples, images=x)
    attack = compiled(model, ("square", np.shape(x)[1:], model_fn.samples, epsilon, queries, p_init),
                      lambda rng: _square_graph(model_fn, epsilon, queries, p_init, rng, batch_signature(x)), seed)
    return run_batched(attack, x, y, batch_size, f"square {queries} queries")
