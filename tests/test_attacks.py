import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks import EOT, input_gradient, negative_log_likelihood


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
    with pytest.warns(UserWarning, match="no random layer"):
        eot = EOT(model, 5)
    assert eot.samples == 1
    nll = negative_log_likelihood(y, eot(x)).numpy()
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), model(x)).numpy()
    np.testing.assert_allclose(nll, ce, rtol=1e-5)
    # With a random layer: its gradient is the mean of per-draw gradients (samples tiled in one pass).
    # Negligible noise (σ = e^-10) and no max-pooling, whose ties the noise could break differently:
    # every draw is then the same smooth network.
    noisy = keras.Sequential([keras.Input((28, 28, 1)), kp.PixelwiseNoiseInjection(bias_initializer="zeros"),
                              keras.layers.Flatten(), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(10)])
    noisy.layers[0].bias.assign(np.full((28, 28, 1), -20.0, np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(negative_log_likelihood(y, EOT(noisy, 3)(x)))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), input_gradient(noisy, x, y).numpy(), rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("attack, kwargs", [("pgd", {"steps": 10}), ("spsa", {"steps": 5, "samples": 32})])
def test_attacks_stay_in_the_eps_ball_and_pixel_range(attack, kwargs, trained_pair, mnist):
    _, (xt, yt) = mnist
    x_adv = kp.attacks.get_attack(attack)(trained_pair[True], xt[:20], yt[:20], 0.1, eot_samples=2, **kwargs)
    assert x_adv.shape == xt[:20].shape
    assert np.abs(x_adv - xt[:20]).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_beats_random_noise_and_more_steps_do_not_hurt(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:300], yt[:300], 0.15
    noise = np.clip(x + np.random.default_rng(0).choice([-eps, eps], size=x.shape), 0, 1).astype("float32")
    acc = {name: kp.evaluation.accuracy(model, adv, y) for name, adv in {
        "noise": noise, "pgd5": kp.attacks.pgd(model, x, y, eps, steps=5, step_size=eps / 2),
        "pgd20": kp.attacks.pgd(model, x, y, eps, steps=20, step_size=eps / 8)}.items()}
    assert acc["pgd5"] < acc["noise"] - 0.3
    assert acc["pgd20"] <= acc["pgd5"] + 0.02


def test_spsa_breaks_a_gradient_masking_model_that_pgd_cannot(masked_model, mnist):
    _, (xt, yt) = mnist
    x, y, eps = xt[:60], yt[:60], 0.3
    pgd_acc = kp.evaluation.accuracy(masked_model, kp.attacks.pgd(masked_model, x, y, eps, steps=20), y)
    spsa_adv = kp.attacks.spsa(masked_model, x, y, eps, steps=20, samples=128, learning_rate=0.05, delta=0.05)
    spsa_acc = kp.evaluation.accuracy(masked_model, spsa_adv, y)
    assert pgd_acc > 0.5  # zero gradients: PGD only adds its random start
    assert spsa_acc < pgd_acc - 0.3


def test_bad_attack_arguments_are_rejected(trained_pair, mnist):
    _, (xt, yt) = mnist
    model = trained_pair[False]
    with pytest.raises(ValueError, match="Unknown attack 'cw'"):
        kp.attacks.get_attack("cw")
    with pytest.raises(ValueError, match="epsilon must be a number in"):
        kp.attacks.pgd(model, xt[:2], yt[:2], 2.0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        kp.attacks.spsa(model, xt[:2] * 255, yt[:2], 0.1)
    with pytest.raises(ValueError, match="differ in length"):
        kp.attacks.pgd(model, xt[:2], yt[:3], 0.1)
