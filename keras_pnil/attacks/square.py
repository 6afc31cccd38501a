"""The Square attack (Andriushchenko et al., 2020): L∞, L2 or L1 (as AutoAttack's code has it), untargeted,
score-based and gradient-free."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    SEED_SPEC,
    Draws,
    batch_signature,
    check_attack_args,
    compiled,
    graph_loop,
    run_batched,
)
from keras_pnil.attacks.eot import EOT
from keras_pnil.threat import DEFAULT_BOUNDS, Norm, ThreatModel
from keras_pnil.validation import check_count

NORMS_BUILT = ("linf", "l2", "l1")
# The L2 and L1 windows' meta-pattern (`_meta_pattern`): concentric rings weighing 1/(k+1)^power.
RING_POWER = {"l2": 2.0, "l1": 4.0}
START_GRID = 5  # the L2 and L1 start: a grid of 5 × 5 windows (`_grid_start`)
L1_RADIUS_SLACK = 1e-6  # L1 projects onto the ball of radius ε(1 - slack), as the official code does


SCHEDULE_QUERIES = 10000  # the run the paper's window schedule is written for


def _square_fraction(p_init: float, query, schedule: int):
    """The paper's schedule: the square's pixel fraction halves at fixed fractions of a run of `schedule`
    queries (at queries 10, 50, 200, ... of a 10,000-query run)."""
    boundaries = tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], tf.float32)
    halvings = tf.reduce_sum(tf.cast(tf.cast(query, tf.float32) * float(SCHEDULE_QUERIES) / schedule > boundaries,
                                     tf.float32))
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


def _queries(query_step, queries: int, x_best, margin):
    """Square's loop (see `graph_loop`): `query_step(query, x_best, margin) → (query + 1, x_best, margin)` for
    queries 1 to `queries - 1` (the start was the first), stopping once every image is misclassified."""
    return graph_loop(query_step, queries, x_best, margin, first=1,
                      done=lambda x_best, margin: tf.reduce_all(margin <= 0.0))[0]


def _signs(rng: Draws, shape):
    return tf.sign(rng.uniform(shape, -1.0, 1.0))


def _window(rows, cols, top, left, side):
    return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def _square_graph(model_fn: EOT, threat: ThreatModel, queries: int, p_init: float, schedule: int,
                  signature: list):
    margin_of = _margin(model_fn)
    epsilon, (lo, hi) = threat.epsilon, threat.bounds

    @tf.function(input_signature=[*signature, SEED_SPEC], autograph=False)
    def attack(x, y, seed):
        rng = Draws(seed)
        batch, height, width = tf.unstack(tf.shape(x)[:3])
        channels = x.shape[-1]  # static, so the loop keeps x_best's shape
        # Start: vertical stripes of ±ε, one sign per column and channel.
        x_best = tf.clip_by_value(x + epsilon * _signs(rng, [batch, 1, width, channels]), lo, hi)
        rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]

        def query_step(query, x_best, margin):
            draws = rng.at(query)
            side = tf.cast(tf.round(tf.sqrt(_square_fraction(p_init, query, schedule)
                                            * tf.cast(height * width, tf.float32))), tf.int32)
            side = tf.clip_by_value(side, 1, height - 1)
            top = draws.uniform([batch, 1, 1], 0, height - side + 1, tf.int32)
            left = draws.uniform([batch, 1, 1], 0, width - side + 1, tf.int32)
            window = _window(rows, cols, top, left, side)
            # A fresh ±ε per channel over the square, for the images not yet fooled.
            candidate = tf.where(window[..., None], epsilon * _signs(draws, [batch, 1, 1, channels]), x_best - x)
            x_new = tf.clip_by_value(x + candidate, lo, hi)
            return (query + 1, *_keep_better(x, x_new, x_best, margin_of(x_new, y), margin))

        return _queries(query_step, queries, x_best, margin_of(x_best, y))

    return attack


def _meta_pattern(norm: Norm, side, power: float):
    """The official code's window pattern (`eta`) on a side × side grid: its rows split in two halves, + on
    the first and − on the second, each concentric square rings around its centre where ring d weighs
    Σ_{k>=d} 1/(k+1)^power; each half of unit norm, then the whole (L2: power 2; L1: power 4, L1 norms)."""
    u, v = tf.range(side)[:, None], tf.range(side)[None, :]
    half = side // 2
    first = u < half
    centre = tf.where(first, half // 2, half + (side - half) // 2)
    ring = tf.maximum(tf.abs(u - centre), tf.abs(v - side // 2))
    weights = tf.pow(tf.cast(tf.range(side // 2 + 1) + 1, tf.float32), -power)
    value = tf.gather(tf.cumsum(weights, reverse=True), ring)

    def unit(t):
        return tf.math.divide_no_nan(t, norm.distance(tf.reshape(t, [1, -1]))[0])

    return unit(unit(tf.where(first, value, 0.0)) - unit(tf.where(first, 0.0, value)))


def _placed(pattern, u, v, side, flip):
    """`pattern` read at window coordinates (u, v), transposed where `flip`; 0 outside the window."""
    inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
    u, v = tf.clip_by_value(u, 0, side - 1), tf.clip_by_value(v, 0, side - 1)
    return tf.where(inside, tf.gather_nd(pattern, tf.stack([tf.where(flip, v, u), tf.where(flip, u, v)], -1)), 0.0)


def _grid_start(norm: Norm, power: float, rng: Draws, batch, height: int, width: int,
                channels: int):
    """The official L2 and L1 start: a grid of windows of side s = ⌊height/5⌋ (at least 1; the official code
    fails below 5 pixels), ⌊height/s⌋ × ⌊width/s⌋ of them from the offset that centres five, each holding the
    meta-pattern (transposed at random) with a random sign per channel; 0 elsewhere."""
    side = max(height // START_GRID, 1)
    offset = max((height - START_GRID * side) // 2, 0)
    cells = (height // side, width // side)
    rows, cols = np.arange(height) - offset, np.arange(width) - offset
    cell = np.clip(rows // side, 0, cells[0] - 1)[:, None] * cells[1] + np.clip(cols // side, 0, cells[1] - 1)[None]
    valid = ((rows >= 0) & (rows // side < cells[0]))[:, None] & ((cols >= 0) & (cols // side < cells[1]))[None]
    u = np.broadcast_to((rows % side)[:, None], cell.shape)
    v = np.broadcast_to((cols % side)[None], cell.shape)
    flips = tf.gather(rng.uniform([batch, cells[0] * cells[1]], 0, 2, tf.int32) > 0, cell, axis=1)  # [B, H, W]
    signs = tf.gather(tf.sign(rng.uniform([batch, cells[0] * cells[1], channels], -1.0, 1.0)), cell, axis=1)
    value = _placed(_meta_pattern(norm, side, power), tf.constant(u), tf.constant(v), side, flips)
    return tf.where(tf.constant(valid)[None], value, 0.0)[..., None] * signs


def _square_lp_graph(model_fn: EOT, threat: ThreatModel, queries: int, p_init: float, schedule: int,
                     signature: list):
    """Square in L2 (the paper's Algorithm 3) or L1, as the official code composes them: each query moves the
    perturbation's mass of two windows into a fresh meta-pattern on the first (`_meta_pattern`, a random sign
    per channel) plus the first window's old content, scaled to that mass and an equal share per channel of
    the unused radius; L2 then rescales the whole to norm ε and clips it into the input range, L1 (whose
    window the official code scales by the channel count) projects it onto the L1 ball ∩ the range. Windows
    have an odd side of at least 3 pixels (at most the image's) and every position, the last one included
    (the official code never draws it); the start is `_grid_start`, brought into the ball the same way."""
    margin_of = _margin(model_fn)
    norm, epsilon, (lo, hi) = threat.norm, threat.epsilon, threat.bounds
    p, power = norm.p, RING_POWER[norm.name]
    ball = replace(threat, epsilon=epsilon * (1.0 - L1_RADIUS_SLACK)) if norm.name == "l1" else threat

    def lp(t, axes=(1, 2)):  # per-channel (or, with axes (1, 2, 3), per-image) norms
        return tf.pow(tf.reduce_sum(tf.pow(tf.abs(t), p), axis=axes, keepdims=True), 1.0 / p)

    def into_ball(x, delta):
        if norm.name == "l1":
            return ball.project(x + delta, x)
        return tf.clip_by_value(x + epsilon * tf.math.divide_no_nan(delta, lp(delta, (1, 2, 3))), lo, hi)

    @tf.function(input_signature=[*signature, SEED_SPEC], autograph=False)
    def attack(x, y, seed):
        rng = Draws(seed)
        batch, height, width = tf.unstack(tf.shape(x)[:3])
        static_height, static_width, channels = x.shape[1:]  # static, so the loop keeps x_best's shape
        x_best = into_ball(x, _grid_start(norm, power, rng, batch, static_height, static_width, channels))
        rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]

        def query_step(query, x_best, margin):
            draws = rng.at(query)
            side = tf.cast(tf.round(tf.sqrt(_square_fraction(p_init, query, schedule)
                                            * tf.cast(height * width, tf.float32))), tf.int32)
            side = tf.maximum(side, 3)
            side = tf.minimum(side + 1 - side % 2, tf.minimum(height, width))  # odd, within the image
            first, second = ([draws.uniform([batch, 1, 1], 0, extent - side + 1, tf.int32)
                              for extent in (height, width)] for _ in range(2))
            w1 = tf.cast(_window(rows, cols, *first, side), x.dtype)[..., None]
            both = tf.maximum(w1, tf.cast(_window(rows, cols, *second, side), x.dtype)[..., None])
            delta = x_best - x
            flip = draws.uniform([batch, 1, 1], 0, 2, tf.int32) > 0
            pattern = _placed(_meta_pattern(norm, side, power), rows - first[0] + 0 * cols,
                              cols - first[1] + 0 * rows, side, flip)
            fresh = (pattern[..., None] * _signs(draws, [batch, 1, 1, channels])
                     + tf.math.divide_no_nan(delta * w1, lp(delta * w1)))
            spare = tf.nn.relu(epsilon ** p - tf.pow(lp(delta, (1, 2, 3)), p)) / channels
            mass = tf.pow(spare + tf.pow(lp(delta * both), p), 1.0 / p) * (channels if norm.name == "l1" else 1)
            fresh = tf.math.divide_no_nan(fresh, lp(fresh)) * mass
            x_new = into_ball(x, delta * (1.0 - both) + fresh)
            return (query + 1, *_keep_better(x, x_new, x_best, margin_of(x_new, y), margin))

        return _queries(query_step, queries, x_best, margin_of(x_best, y))

    return attack


def square(model, x, y, epsilon: float, *, queries: int = 5000, p_init: float = 0.8, norm: str = "linf",
           bounds=DEFAULT_BOUNDS, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
           seed: int | None = 0, schedule_queries: int | None = None) -> np.ndarray:
    """The Square attack (L∞; L2 and L1 with the windows of concentric rings of AutoAttack's code), with every
    score the EOT mean over the model's noise draws.

    L∞: random ±ε vertical stripes to start, then one random square window
    per query (its side shrinking on the paper's schedule from `p_init` of
    the image) set to a fresh ±ε per channel, kept only if it lowers the
    margin. L2 and L1: a grid of ring patterns to start, then per query the
    mass of two windows moved into a fresh ring pattern on the first
    (`_square_lp_graph`). On a random model the greedy acceptance then
    follows the expected score, not one draw's luck. Images already
    misclassified stop moving; a batch stops when all are.

    Example:
        >>> x_adv = square(model, x, y, 12.0, norm="l1", queries=5000)

    Args:
        model: A Keras model that outputs logits, on NHWC images.
        x, y: Images within `bounds` and integer labels.
        epsilon: The radius, in the units of the model's inputs.
        queries: Score queries per image (AutoAttack: 5000).
        p_init: Initial fraction of the image a square covers.
        norm: "linf", "l2" or "l1".
        bounds: The model's input range (lo, hi).
        eot_samples: Noise draws per score (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's draws (`attacks.common.SeededGraph`); None: a fresh one.
        schedule_queries: The run the window schedule spans (default `queries`: the schedule rescaled to
            the run, as the official Square's own default). AutoAttack's ensemble passes 10,000, as the official
            ensemble does (`resc_schedule=False`): with 5,000 queries its windows then shrink half as often.

    Returns:
        The adversarial images, a NumPy array shaped like `x`.
    """
    queries = check_count("queries", queries)
    schedule = queries if schedule_queries is None else check_count("schedule_queries", schedule_queries)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must lie in (0, 1]; got {p_init!r}.")
    if np.ndim(x) != 4:
        raise ValueError(f"square expects NHWC image batches; got shape {np.shape(x)}.")
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds, attack="square",
                                     norms=NORMS_BUILT)
    model_fn = EOT(model, eot_samples, images=x)
    graph = _square_graph if threat.norm.name == "linf" else _square_lp_graph
    attack = compiled(model, ("square", np.shape(x)[1:], model_fn.samples, threat, queries, p_init, schedule),
                      lambda: graph(model_fn, threat, queries, p_init, schedule, batch_signature(x)), seed,
                      sliced=not model_fn.random)
    return run_batched(attack, x, y, batch_size, f"square {queries} queries")
