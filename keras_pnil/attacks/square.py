"""The Square attack (Andriushchenko et al., 2020): L∞ or L2, untargeted, score-based and gradient-free."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import DEFAULT_BATCH_SIZE, batch_signature, check_attack_args, compiled, run_batched
from keras_pnil.attacks.eot import EOT
from keras_pnil.threat import DEFAULT_BOUNDS, ThreatModel
from keras_pnil.validation import check_count

NORMS_BUILT = ("linf", "l2")
# Σ_{k<=n} 1/(k+1)²: the L2 windows' concentric rings weigh 1/(k+1)² (the paper's meta-pattern).
_RINGS = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 4097) ** 2)]).astype(np.float32)


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


def _keep_better(x, x_new, x_best, margin_new, margin):
    """A candidate replaces the best only where it lowers the margin of an image still classified right."""
    accept = (margin_new < margin) & (margin > 0.0)
    # Static shapes kept for the loop (a batch of 1 would otherwise broadcast to None).
    return (tf.ensure_shape(tf.where(accept[:, None, None, None], x_new, x_best), x.shape),
            tf.ensure_shape(tf.where(accept, margin_new, margin), margin.shape))


def _window(rows, cols, top, left, side):
    return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def _square_graph(model_fn: EOT, threat: ThreatModel, queries: int, p_init: float, rng: tf.random.Generator,
                  signature: list):
    margin_of = _margin(model_fn)
    epsilon, (lo, hi) = threat.epsilon, threat.bounds

    def signs(shape):
        return tf.sign(rng.uniform(shape, -1.0, 1.0))

    @tf.function(input_signature=signature)
    def attack(x, y):
        batch, height, width = tf.unstack(tf.shape(x)[:3])
        channels = x.shape[-1]  # static, so the loop keeps x_best's shape
        # Start: vertical stripes of ±ε, one sign per column and channel.
        x_best = tf.clip_by_value(x + epsilon * signs([batch, 1, width, channels]), lo, hi)
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
            window = _window(rows, cols, top, left, side)
            # A fresh ±ε per channel over the square, for the images not yet fooled.
            candidate = tf.where(window[..., None], epsilon * signs([batch, 1, 1, channels]), x_best - x)
            x_new = tf.clip_by_value(x + candidate, lo, hi)
            margin_new = margin_of(x_new, y)
            x_best, margin = _keep_better(x, x_new, x_best, margin_new, margin)
        return x_best

    return attack


def _rings(rows, cols, top, left, side, flip):
    """The paper's L2 meta-pattern on a window: two halves of opposite sign (split across rows, or across
    columns where `flip`), each concentric rings around its centre weighing Σ_{k>=d} 1/(k+1)² at ring d."""
    u, v = tf.where(flip, cols, rows), tf.where(flip, rows, cols)
    u0, v0 = tf.where(flip, left, top), tf.where(flip, top, left)
    half = side // 2
    first = u < u0 + half
    start, length = tf.where(first, u0, u0 + half), tf.where(first, half, side - half)
    d = tf.maximum(tf.abs(u - (start + length // 2)), tf.abs(v - (v0 + side // 2)))
    outer = tf.maximum(length, side) // 2
    value = tf.gather(_RINGS, outer + 1) - tf.gather(_RINGS, tf.minimum(d, outer + 1))
    return tf.where(_window(rows, cols, top, left, side), tf.where(first, value, -value), 0.0)


def _square_l2_graph(model_fn: EOT, threat: ThreatModel, queries: int, p_init: float, rng: tf.random.Generator,
                     signature: list):
    """Square in L2 (the paper's Algorithm 3): each query moves the perturbation's mass of two windows into a
    fresh meta-pattern on the first (a random sign per channel), keeping the norm at ε (then clipped into the
    input range, which can only shorten it). The start is ±1 stripes scaled to norm ε."""
    margin_of = _margin(model_fn)
    epsilon, (lo, hi) = threat.epsilon, threat.bounds

    def signs(shape):
        return tf.sign(rng.uniform(shape, -1.0, 1.0))

    def sq(t, axes=(1, 2)):
        return tf.reduce_sum(tf.square(t), axis=axes, keepdims=True)

    @tf.function(input_signature=signature)
    def attack(x, y):
        batch, height, width = tf.unstack(tf.shape(x)[:3])
        channels = x.shape[-1]
        stripes = signs([batch, 1, width, channels]) * tf.ones_like(x)
        x_best = tf.clip_by_value(x + epsilon * stripes / tf.sqrt(sq(stripes, (1, 2, 3))), lo, hi)
        margin = margin_of(x_best, y)
        rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]
        for query in tf.range(1, queries):
            if tf.reduce_all(margin <= 0.0):
                break
            side = tf.cast(tf.round(tf.sqrt(_square_fraction(p_init, query, queries)
                                            * tf.cast(height * width, tf.float32))), tf.int32)
            side = tf.clip_by_value(side, 2, height - 1)
            first, second = ([rng.uniform([batch, 1, 1], 0, extent - side + 1, tf.int32) for extent in (height, width)]
                             for _ in range(2))
            w1, both = _window(rows, cols, *first, side), _window(rows, cols, *first, side) | _window(
                rows, cols, *second, side)
            w1, both = tf.cast(w1, x.dtype)[..., None], tf.cast(both, x.dtype)[..., None]
            delta = x_best - x
            spare = tf.nn.relu(epsilon ** 2 - sq(delta, (1, 2, 3))) / channels
            budget = sq(delta * both) + spare  # per channel: the windows' mass and an equal share of what is unused
            flip = rng.uniform([batch, 1, 1], 0, 2, tf.int32) > 0
            pattern = _rings(rows, cols, *first, side, flip)[..., None] * signs([batch, 1, 1, channels])
            fresh = pattern / tf.sqrt(sq(pattern) + 1e-24) + delta * w1 / tf.sqrt(sq(delta * w1) + 1e-24)
            fresh = fresh * tf.sqrt(budget / (sq(fresh) + 1e-24))
            x_new = tf.clip_by_value(x + delta * (1.0 - both) + fresh, lo, hi)
            margin_new = margin_of(x_new, y)
            x_best, margin = _keep_better(x, x_new, x_best, margin_new, margin)
        return x_best

    return attack


def square(model, x, y, epsilon: float, *, queries: int = 5000, p_init: float = 0.8, norm: str = "linf",
           bounds=DEFAULT_BOUNDS, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
           seed: int | None = 0) -> np.ndarray:
    """The Square attack (L∞, or L2 with the paper's windows of concentric rings), with every score the EOT
    mean over the model's noise draws.

    Random ±ε vertical stripes to start, then one random square window per
    query (its side shrinking on the paper's schedule from `p_init` of the
    image) set to a fresh ±ε per channel, kept only if it lowers the margin.
    On a random model the greedy acceptance then follows the expected score,
    not one draw's luck. Images already misclassified stop moving; a batch
    stops when all are.

    Args:
        model: A Keras model that outputs logits, on NHWC images.
        x, y: Images within `bounds` and integer labels.
        epsilon: The radius, in the units of the model's inputs.
        queries: Score queries per image (AutoAttack: 5000).
        p_init: Initial fraction of the image a square covers.
        norm: "linf" or "l2" (no L1 version).
        bounds: The model's input range (lo, hi).
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
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds, attack="square",
                                     norms=NORMS_BUILT)
    model_fn = EOT(model, eot_samples, images=x)
    graph = _square_l2_graph if threat.norm.name == "l2" else _square_graph
    attack = compiled(model, ("square", np.shape(x)[1:], model_fn.samples, threat, queries, p_init),
                      lambda rng: graph(model_fn, threat, queries, p_init, rng, batch_signature(x)), seed)
    return run_batched(attack, x, y, batch_size, f"square {queries} queries")
