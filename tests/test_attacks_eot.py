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
