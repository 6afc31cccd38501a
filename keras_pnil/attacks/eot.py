"""Expectation over Transformation: input gradients and a `model_fn` averaged over a model's noise draws.

Every attack is written against a `model_fn` (inputs → scores), after
CleverHans. `EOT` turns a model with random layers into such a `model_fn`, so
every attack gains EOT without knowing about it.

Mixed precision: build the model under Keras' policy, globally
(`keras.mixed_precision.set_dtype_policy("mixed_float16")` before building it,
as `keras-pnil-train --mixed-precision` does) or per model (`dtype="mixed_float16"`
on its layers). `compile` then wraps the optimizer in Keras' `LossScaleOptimizer`
for the weights, and every input gradient taken here (the attacks' through `EOT`,
the training methods' through `input_gradient`) is loss-scaled per image
(`scaled_backward`), so sign(∇x) agrees with float32's instead of underflowing
to zero; the PNIL draws its noise in float32. Nothing else is needed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.attacks import lanes
from keras_pnil.validation import check_count, check_inputs

# EOT draws used when an attack is given `eot_samples=None` and the model is
# random: AutoAttack's `rand` version uses 20.
DEFAULT_EOT_SAMPLES = 20


def draw_groups(samples: int, parts: int) -> list[int]:
    """`samples` draws in at most `parts` groups as equal as they come, the larger first.

    Example:
        >>> draw_groups(20, 2), draw_groups(3, 2), draw_groups(1, 2)
        ([10, 10], [2, 1], [1])
    """
    return [samples // parts + (i < samples % parts) for i in range(min(parts, samples))]


def tile(x, samples: int):
    """`samples` copies of the batch, stacked on the batch axis (sample-major)."""
    return tf.tile(x, tf.concat([[samples], tf.ones(tf.rank(x) - 1, tf.int32)], 0))


def cross_entropy_sum(y, logits):
    """Summed (not averaged) cross-entropy: its input gradient is per-example."""
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=tf.cast(logits, tf.float32)))


# Under float16 compute, a backward pass runs with each row's gradient at the logits scaled by a power of two
# that brings its largest entry into [2^(E-1), 2^E), and each image's input gradient is scaled back in float32
# (see `scaled_backward`). A confident model's cross-entropy gradient (1 - p ≈ 1e-6) and everything it
# becomes on the way back to the pixels would otherwise underflow float16 (smallest normal 6.1e-5, smallest
# value 6e-8), and sign(∇x) would be zero or noise; 2^E is about the per-image scale of Keras' own dynamic
# loss scale (2^15 over a batch of a hundred or so), under float16's largest value (65504) for any network
# whose backward pass does not grow a gradient by 2^7 per row.
LOSS_SCALE_EXPONENT = 8


def _power_of_two(exponent):
    """2^exponent in float32, exactly (built from its bits), for integer exponents in [-126, 127]."""
    return tf.bitcast(tf.bitwise.left_shift(tf.clip_by_value(exponent, -126, 127) + 127, 23), tf.float32)


def _row_exponent(g):
    """Per row of `g` (float32), the power of two that brings its largest |entry| into [2^(E-1), 2^E); 0 for a
    zero row."""
    peak = tf.reduce_max(tf.abs(tf.reshape(g, [tf.shape(g)[0], -1])), axis=1)
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.bitcast(peak, tf.int32), 23), 255) - 126
    return tf.stop_gradient(tf.where(peak > 0, tf.clip_by_value(LOSS_SCALE_EXPONENT - exponent, -126, 126), 0))


def _rows(values, like):
    return tf.reshape(values, tf.concat([tf.shape(values), tf.ones(tf.rank(like) - 1, tf.int32)], 0))


def computes_in_float16(model) -> bool:
    """Whether any layer of `model` computes in float16 (a `mixed_float16` policy, global or its own)."""
    layers = model._flatten_layers() if hasattr(model, "_flatten_layers") else ()
    return any(getattr(layer, "compute_dtype", None) == "float16" for layer in layers)


def scaled_backward(call, x, float16: bool | None = None):
    """`call(x)` as float32 scores whose backward pass is loss-scaled per row when the model computes in float16.

    Forward, nothing changes. Backward, each row's gradient at the scores is
    multiplied by a power of two (`LOSS_SCALE_EXPONENT`) on its way into the
    float16 network and divided by it again, in float32, where it leaves at
    `x`: exact (powers of two), per row (a confident image's tiny gradient
    is raised as much as it needs, a misclassified one's not past float16's
    range), whatever loss the caller differentiates, and differentiable again
    (GradAlign differentiates an input gradient for the weights). `float16`
    defaults to: `call` is a model (or a model's method) with a float16 layer, else its scores are float16.
    Rows of `x` and of the scores must correspond (one image each).

    Example:
        >>> scores = scaled_backward(model, x)  # as tf.cast(model(x), tf.float32), with float16-safe gradients
    """
    if float16 is None:
        owner = getattr(call, "__self__", call)  # a model, or a model's bound method (a trainer's `_model_fn`)
        float16 = computes_in_float16(owner) if isinstance(owner, keras.layers.Layer) else None
    if float16 is False:
        return tf.cast(call(x), tf.float32)
    exponents = {}  # set by the scores' gradient, read by the input's, which comes later in the same backward pass

    @tf.custom_gradient
    def enter(t):
        def grad(g):
            return g * _rows(_power_of_two(-exponents["value"]), g) if "value" in exponents else g
        return tf.identity(t), grad

    @tf.custom_gradient
    def leave(t):
        def grad(g):
            exponents["value"] = _row_exponent(g)
            return g * _rows(_power_of_two(exponents["value"]), g)
        return tf.identity(t), grad

    scores = call(enter(x))
    if float16 or scores.dtype == tf.float16:  # a bare callable's scores tell
        return leave(tf.cast(scores, tf.float32))
    return tf.cast(scores, tf.float32)


def input_gradient(model_fn, x, y, samples: int = 1):
    """∇x of the cross-entropy summed over `samples` independent draws of the model's noise.

    The batch is tiled `samples` times and run in one pass, so L gradient
    samples cost one (larger) forward-backward pass, not L Python iterations.
    Under float16 compute (Keras' `mixed_float16`) the backward pass is loss-scaled per image
    (`scaled_backward`), so sign(∇x) does not underflow to zero.
    """
    xt, yt = (x, y) if samples == 1 else (tile(x, samples), tile(y, samples))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = cross_entropy_sum(yt, scaled_backward(model_fn, xt))
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
        self.float16 = computes_in_float16(model)  # then gradients through it are loss-scaled (`scaled_backward`)
        if self.probabilities and first_notice_of_probabilities(model):
            warnings.warn(f"Model {model.name!r} outputs probabilities (rows sum to 1), not logits: attacking "
                          "their logarithms. Models should output logits.", stacklevel=3)

    def draws(self, x):
        """Logits of each draw, shaped [samples, batch, classes]. On a random model the draws are computed in
        `lanes.count()` groups, which a compiled graph runs side by side (`attacks.lanes`)."""
        groups = draw_groups(self.samples, lanes.count() if self.random else 1)
        outputs = tf.concat([scaled_backward(lambda t: self.model(t, training=False), tile(x, draws), self.float16)
                             for draws in groups], 0)
        if self.probabilities:
            outputs = tf.math.log(tf.maximum(outputs, 1e-30))  # log(0) would make every loss infinite
        return tf.reshape(outputs, [self.samples, tf.shape(x)[0], -1])

    def __call__(self, x):
        return tf.reduce_mean(tf.nn.log_softmax(self.draws(x)), axis=0)
