import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp


def test_square_with_eot_beats_square_without_on_a_very_noisy_model(trained_pair, mnist, with_noise):
    _, (xt, yt) = mnist
    model = with_noise(trained_pair[True], -1.4)  # σ = 0.5 on every pixel
    x, y = xt[:100], yt[:100]
    acc = {e: kp.accuracy(model, kp.square(model, x, y, 0.2, queries=200, eot_samples=e), y, draws=16)
           for e in (1, 8)}
    print("Square accuracy by EOT samples", acc)
    # Without EOT, greedy acceptance keeps lucky draws and then stalls against them.
    assert acc[8] < acc[1] - 0.03


def test_square_rejects_bad_arguments(trained_pair, mnist):
    _, (xt, yt) = mnist
    with pytest.raises(ValueError, match="queries must be an integer"):
        kp.square(trained_pair[True], xt[:2], yt[:2], 0.1, queries=0)
    with pytest.raises(ValueError, match="NHWC"):
        kp.square(trained_pair[True], xt[:2, :, :, 0], yt[:2], 0.1)


class Constant(keras.layers.Layer):
    """Logits (5, 0) whatever the image: no square is ever accepted, so every query shows a fresh window."""

    def call(self, x):
        ones = tf.ones_like(x[:, 0, 0, 0])
        return tf.stack([5.0 * ones, 0.0 * ones], axis=1) + 0.0 * tf.reduce_sum(x, axis=[1, 2, 3])[:, None]


# The paper's schedule for 100 queries on 16 × 16 pixels, p_init = 0.8: the square's fraction of the image
# halves after queries 1, 3, 6, 11, 21, 41, 61, 81 (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a
# 10,000-query run), and its side is round(√(p · 256)), at least 1: 7 (p = 0.2) until query 2, then 5, 4, 3,
# 2, and 1 from query 41 (√(0.00625 · 256) = 1.26).
SIDES = {**dict.fromkeys(range(1, 3), 7), **dict.fromkeys(range(3, 6), 5), **dict.fromkeys(range(6, 11), 4),
         **dict.fromkeys(range(11, 21), 3), **dict.fromkeys(range(21, 41), 2), **dict.fromkeys(range(41, 100), 1)}


@pytest.mark.parametrize("channels", [1, 3])
def test_square_windows_shrink_on_the_papers_schedule(recorder, channels):
    model = keras.Sequential([keras.Input((16, 16, channels)), recorder, Constant()])
    x = np.full((1, 16, 16, channels), 0.5, np.float32)
    kp.square(model, x, np.array([0]), 0.1, queries=100, p_init=0.8)
    start, *queries = [batch[0] for batch in recorder.seen[-100:]]
    # The start: vertical stripes of ±ε, one sign per column and channel.
    assert np.all(np.abs(start - 0.5) == pytest.approx(0.1)) and np.all(start == start[:1])
    if channels == 3:
        assert np.any(start[0, :, 0] != start[0, :, 1])  # each channel draws its own signs
    sides, mixed_windows = {}, 0
    for query, point in enumerate(queries, start=1):
        changed = np.any(point != start, axis=-1)  # the pixels of the window whose sign changed
        rows = changed.sum(0)
        if rows.any():
            sides[query] = int(rows.max())
            assert np.all(rows[rows > 0] == sides[query])  # a square: the same rows in every column it changed
            mixed_windows += np.ptp(point[changed], axis=-1).max() > 0  # its channels took different signs
    assert len(sides) > 60
    assert sides == {q: SIDES[q] for q in sides}
    assert (mixed_windows > 20) == (channels == 3)  # a fresh sign per channel (each window: 3 in 4 mix them)


def test_square_windows_follow_a_10000_query_schedule_when_told_as_autoattack_runs_it(recorder):
    # schedule_queries=10000 on 100 queries (the official ensemble's resc_schedule=False): the fraction halves
    # only after queries 10 and 50 of the same 10, 50, 200, ... boundaries, so the side is round(√(p · 256)),
    # clipped to 15: 14 (p = 0.8) up to query 10, 10 (p = 0.4) up to 50, then 7 (p = 0.2).
    model = keras.Sequential([keras.Input((16, 16, 1)), recorder, Constant()])
    kp.square(model, np.full((1, 16, 16, 1), 0.5, np.float32), np.array([0]), 0.1, queries=100, p_init=0.8,
              schedule_queries=10000)
    start, *queries = [batch[0] for batch in recorder.seen[-100:]]
    sides = {q: int(np.any(p != start, axis=-1).sum(0).max()) for q, p in enumerate(queries, start=1)
             if np.any(p != start)}
    expected = {**dict.fromkeys(range(1, 11), 14), **dict.fromkeys(range(11, 51), 10),
                **dict.fromkeys(range(51, 100), 7)}
    assert len(sides) > 60 and sides == {q: expected[q] for q in sides}


def test_autoattacks_square_stage_uses_the_unrescaled_schedule():
    ensemble = importlib.import_module("keras_pnil.attacks.autoattack")  # the package exports the function

    stages = ensemble._stages("standard", "linf", 100, 5000, 9, 100)
    assert stages["square"][1] == {"queries": 5000, "schedule_queries": 10000}
    assert ensemble._stages("standard", "l2", 100, 5000, 9, 100)["square"][1]["schedule_queries"] == 10000
