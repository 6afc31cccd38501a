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


def test_apgd_checkpoints_follow_the_papers_schedule():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (steps of max(previous step - 0.03, 0.06)).
    assert kp.attacks.apgd_checkpoints(100).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert kp.attacks.apgd_checkpoints(1000).tolist()[:3] == [220, 410, 570]
    assert kp.attacks.apgd_checkpoints(20).max() <= 20


@pytest.mark.parametrize("attack, kwargs", [
    ("apgd-ce", {"steps": 5}), ("apgd-dlr", {"steps": 5}), ("square", {"queries": 30}),
    ("autoattack", {"steps": 3, "queries": 20})])
def test_new_attacks_stay_in_the_eps_ball_and_pixel_range(attack, kwargs, trained_pair, mnist):
    _, (xt, yt) = mnist
    x_adv = kp.attacks.get_attack(attack)(trained_pair[True], xt[:20], yt[:20], 0.1, eot_samples=2, **kwargs)
    x_adv = x_adv[0] if isinstance(x_adv, tuple) else x_adv
    assert x_adv.shape == xt[:20].shape
    assert np.abs(x_adv - xt[:20]).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    single = kp.attacks.get_attack(attack)(trained_pair[True], xt[:1], yt[:1], 0.1, eot_samples=2, **kwargs)
    assert (single[0] if isinstance(single, tuple) else single).shape == (1, 28, 28, 1)  # a batch of one works


def test_apgd_is_at_least_as_strong_as_pgd(trained_pair, mnist):
    _, (xt, yt) = mnist
    model, x, y, eps = trained_pair[False], xt[:300], yt[:300], 0.1
    pgd_acc = kp.evaluation.accuracy(model, kp.attacks.pgd(model, x, y, eps, steps=20), y)
    ce_acc = kp.evaluation.accuracy(model, kp.attacks.apgd(model, x, y, eps, steps=20, seed=0), y)
    dlr_acc = kp.evaluation.accuracy(model, kp.attacks.apgd(model, x, y, eps, steps=20, loss="dlr", seed=0), y)
    clean = kp.evaluation.accuracy(model, x, y)
    assert ce_acc <= pgd_acc + 0.02 and dlr_acc <= pgd_acc + 0.05  # 300 images: ±0.02-0.03 noise
    assert ce_acc < clean - 0.2


def test_square_with_eot_beats_square_without_on_a_very_noisy_model(trained_pair, mnist):
    _, (xt, yt) = mnist
    model = trained_pair[True]
    layer = model.get_layer("pnil")
    trained_bias = layer.bias.numpy()
    layer.bias.assign(np.full((28, 28, 1), -1.4, np.float32))  # σ = 0.5 on every pixel
    try:
        x, y = xt[:100], yt[:100]
        acc = {e: kp.evaluation.accuracy(model, kp.attacks.square(model, x, y, 0.2, 200, eot_samples=e, seed=0),
                                         y, draws=16) for e in (1, 8)}
    finally:
        layer.bias.assign(trained_bias)
    print("Square accuracy by EOT samples", acc)
    # Without EOT, greedy acceptance keeps lucky draws and then stalls against them.
    assert acc[8] < acc[1] - 0.03


def test_autoattack_reports_what_square_finds_on_a_masked_model(masked_model, mnist):
    _, (xt, yt) = mnist
    x, y, eps = xt[:60], yt[:60], 0.3
    x_adv, report = kp.attacks.autoattack(masked_model, x, y, eps, steps=10, queries=300)
    assert report["version"] == "standard"
    square_acc = kp.evaluation.accuracy(masked_model, kp.attacks.square(masked_model, x, y, eps, 300), y)
    apgd_acc = kp.evaluation.accuracy(masked_model, kp.attacks.apgd(masked_model, x, y, eps, steps=10), y)
    assert apgd_acc > 0.5  # zero gradients defeat APGD ...
    assert report["robust_accuracy"] <= square_acc + 0.05 < apgd_acc - 0.3  # ... and Square does the breaking
    assert report["broken_by"].count("square") > report["broken_by"].count("apgd-ce")
    assert kp.evaluation.accuracy(masked_model, x_adv, y) == pytest.approx(report["robust_accuracy"])
    assert report["after"]["square"] == report["robust_accuracy"] <= report["after"]["apgd-dlr"] <= report["clean"]


def test_autoattack_defaults_to_the_rand_version_for_random_models(trained_pair, mnist):
    _, (xt, yt) = mnist
    _, report = kp.attacks.autoattack(trained_pair[True], xt[:10], yt[:10], 0.1, steps=2, eot_samples=2)
    assert report["version"] == "rand" and list(report["after"]) == ["apgd-ce", "apgd-dlr"]
    assert report["eot_samples"] == 2 and len(report["broken_by"]) == 10
    with pytest.raises(ValueError, match="Unknown AutoAttack version 'plus'"):
        kp.attacks.autoattack(trained_pair[True], xt[:2], yt[:2], 0.1, version="plus")
    with pytest.raises(ValueError, match="Unknown APGD loss 'hinge'"):
        kp.attacks.apgd(trained_pair[True], xt[:2], yt[:2], 0.1, loss="hinge")
    with pytest.raises(ValueError, match="queries must be an integer"):
        kp.attacks.square(trained_pair[True], xt[:2], yt[:2], 0.1, queries=0)
