"""How fast a model's forward pass runs here: the unit of every cost estimate."""

from __future__ import annotations

import time

import tensorflow as tf


def forward_throughput(model, image_shape, batch_size: int = 1000, seconds: float = 1.0) -> float:
    """Images per second of a compiled forward pass of `model`, measured here.

    Timed over at least `seconds` of passes after two warm-up calls: a few
    milliseconds of a small network would measure the call overhead, not the model.
    """
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.random.uniform((batch_size, *image_shape))
    forward(x).numpy()
    forward(x).numpy()
    start, passes = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        forward(x).numpy()
        passes += 1
    return batch_size * passes / (time.perf_counter() - start)
