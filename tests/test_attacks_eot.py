import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks import EOT, input_gradient, negative_log_likelihood
from keras_pnil.attacks.eot import DEFAULT_EOT_SAMPLES


def _noisy_model(bias=0.0):
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn(pnil=True, seed=0, filters=(4, 8), dense_units=32)
    model.get_layer("pnil").bias.assign(np.full((28, 28, 1), bias, np.float32))  # σ = exp(bias / 2)
    return model


def _cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_eot_gradient_estimates_agree_more_as_samples_grow(mnist):
    (x, y), _ = mnist
    model = _noisy_model(bias=0.0)  # noise σ = 1 on every pixel
    x, y = tf.constant(x[:32]), tf.constant(y[:32])

    def estimate(samples):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(negative_log_likelihood(y, EOT(model, samples)(x)))
        return tape.gradient(loss, x).numpy()

    cosines = [_cosine(estimate(s), estimate(s)) for s in (1, 8, 64)]
    print("EOT cosines", cosines)
    assert cosines[0] < cosines[1] < cosines[2]
    assert cosines[2] > 0.75 and cosines[0] < 0.4


def test_eot_output_is_the_mean_log_probability_and_its_nll_the_mean_cross_entropy(mnist):
    (x, y), _ = mnist
    model = kp.models.small_cnn(filters=(4, 8), dense_units=16)
    x, y = tf.constant(x[:8]), tf.constant(y[:8])
    with pytest.warns(UserWarning, match="gives the same output on every call"):
        eot = EOT(model, 5)
    assert eot.samples == 1
    nll = negative_log_likelihood(y, eot(x)).numpy()
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), model(x)).numpy()
    np.testing.assert_allclose(nll, ce, rtol=1e-5)
    # With a random layer: its gradient is the mean of per-draw gradients (samples tiled in one pass).
    # Negligible noise (σ = e^-10) and no max-pooling, whose ties the noise could break differently:
    # every draw is then the same smooth network.
    noisy = keras.Sequential([keras.Input((28, 28, 1)), kp.PixelwiseNoiseInjection(bias_initializer="zeros"),
                              keras.layers.Flatten(), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(10)])
    noisy.layers[0].bias.assign(np.full((28, 28, 1), -20.0, np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(negative_log_likelihood(y, EOT(noisy, 3)(x)))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), input_gradient(noisy, x, y).numpy(),
                               rtol=1e-3, atol=2e-5)


def test_default_eot_draws_are_automatic_and_bad_counts_rejected():
    deterministic = kp.models.small_cnn(filters=(4, 8), dense_units=16)
    random = kp.models.small_cnn(pnil=True, filters=(4, 8), dense_units=16)
    assert EOT(deterministic).samples == 1 and EOT(random).samples == DEFAULT_EOT_SAMPLES
    with pytest.raises(ValueError, match="eot_samples must be an integer >= 1; got 0"):
        EOT(random, 0)


def test_input_gradient_samples_are_summed_in_one_pass(mnist):
    (x, y), _ = mnist
    keras.utils.set_random_seed(0)
    model = kp.models.small_cnn(seed=0, filters=(4, 8), dense_units=32)
    x, y = tf.constant(x[:64]), tf.constant(y[:64])
    one = input_gradient(model, x, y).numpy()
    np.testing.assert_allclose(input_gradient(model, x, y, samples=3).numpy(), 3 * one, rtol=1e-4, atol=1e-6)


class KnownDraws(keras.layers.Layer):
    """A random model whose draws are known: logits x·W + T[d], d one of the K rows of the table T.

    Called on `draws` copies of a batch of `images` (EOT's sample-major tiling), the s-th copy gets the row
    (s + calls) mod K, `calls` counting the calls: every call differs from the last (the probe sees a random
    model), and K draws of an image are the K rows of T, each once, so their mean is exact, not estimated.
    """

    def __init__(self, weights, table, images, **kwargs):
        super().__init__(**kwargs)
        self.w, self.table, self.images = tf.constant(weights), tf.constant(table), images
        object.__setattr__(self, "calls", 0)

    def call(self, x):
        draw = (tf.range(tf.shape(x)[0]) // self.images + self.calls) % len(self.table)
        object.__setattr__(self, "calls", self.calls + 1)
        return tf.matmul(x, self.w) + tf.gather(self.table, draw)


W = np.array([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]], np.float32)  # 2 features, 3 classes
TABLE = np.array([[0.0, 0.0, 0.0], [3.0, -1.0, 0.0], [-2.0, 2.0, 1.0], [0.0, 4.0, -3.0]], np.float32)  # K = 4


@pytest.fixture
def one_group(monkeypatch):
    # These tests read each draw from its row's place in one tiled pass; on a machine without a GPU a random
    # model's draws go in `lanes.count()` groups (tested in tests/test_lanes.py).
    monkeypatch.setattr("keras_pnil.attacks.lanes.count", lambda: 1)


def _known_draws(images):
    return keras.Sequential([keras.Input((2,)), KnownDraws(W, TABLE, images)])


def _log_softmax(z):
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_eot_averages_the_log_probabilities_of_every_draw(one_group):
    x = np.array([[0.2, 0.7], [0.9, 0.1], [0.5, 0.5]], np.float32)
    per_draw = _log_softmax((x @ W)[None] + TABLE[:, None])  # [K, images, classes]
    model = _known_draws(len(x))
    eot = EOT(model, len(TABLE), images=x)
    assert eot.random and eot.samples == 4
    np.testing.assert_allclose(eot(tf.constant(x)).numpy(), per_draw.mean(0), rtol=1e-5, atol=1e-6)
    # Twice the draws, each row twice: the same mean. One draw alone, or the log-softmax of the mean logits,
    # would be far from it (the draws' class rankings differ).
    np.testing.assert_allclose(EOT(model, 8)(tf.constant(x)).numpy(), per_draw.mean(0), rtol=1e-5, atol=1e-6)
    assert np.abs(per_draw[0] - per_draw.mean(0)).max() > 0.5
    assert np.abs(_log_softmax(x @ W + TABLE.mean(0)) - per_draw.mean(0)).max() > 0.1


def test_eot_gradients_sum_or_average_every_draws_gradient(one_group):
    # Per draw, ∇x CE = W (softmax(x·W + T[d]) - onehot(y)): input_gradient sums the K draws' gradients,
    # the gradient of EOT's negative log-likelihood is their mean.
    x, y = np.array([[0.2, 0.7], [0.9, 0.1]], np.float32), np.array([2, 0])
    per_draw = np.exp(_log_softmax((x @ W)[None] + TABLE[:, None])) - np.eye(3)[y]  # [K, images, classes]
    expected = (per_draw @ W.T).sum(0)
    model = _known_draws(len(x))
    np.testing.assert_allclose(input_gradient(model, tf.constant(x), tf.constant(y), samples=4).numpy(), expected,
                               rtol=1e-4, atol=1e-6)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(negative_log_likelihood(y, EOT(model, 4, images=x)(xt)))
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), expected / 4, rtol=1e-4, atol=1e-6)
    # One draw's gradient × 4 would not do: the draws' gradients differ.
    assert np.abs(4 * (per_draw[0] @ W.T) - expected).max() > 0.5


EOT_ATTACKS = {
    "pgd": lambda m, x, y, draws: kp.pgd(m, x, y, 0.1, steps=2, eot_samples=draws),
    "apgd": lambda m, x, y, draws: kp.apgd(m, x, y, 0.1, steps=2, eot_samples=draws),
    "apgd-t": lambda m, x, y, draws: kp.apgd_targeted(m, x, y, 0.1, steps=2, targets=1, eot_samples=draws),
    "fab-t": lambda m, x, y, draws: kp.fab_targeted(m, x, y, 0.1, steps=2, targets=1, eot_samples=draws),
    "spsa": lambda m, x, y, draws: kp.spsa(m, x, y, 0.1, steps=2, perturbations=8, eot_samples=draws),
    "square": lambda m, x, y, draws: kp.square(m, x, y, 0.1, queries=5, eot_samples=draws),
}


@pytest.mark.parametrize("name", sorted(EOT_ATTACKS))
def test_every_attack_queries_the_model_with_its_eot_draws(name, recorder, one_group):
    # A spy before a PNIL sees every forward pass: after the probe's two calls, each pass of an attack with
    # 3 draws holds 3 copies of its images (1 or 2 here; SPSA: its 8 perturbations of each), never 1, 2 or 16.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), recorder, kp.PixelwiseNoiseInjection(),
                              keras.layers.Flatten(), keras.layers.Dense(4)])
    x = np.random.default_rng(0).uniform(size=(2, 4, 4, 1)).astype("float32")
    EOT_ATTACKS[name](model, x, np.array([0, 1]), 3)
    passes = [len(batch) for batch in recorder.seen[2:]]
    assert passes and all(n % 3 == 0 for n in passes), passes
