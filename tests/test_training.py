import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.training import get_perturbation

EPS = 0.1


def _tiny(pnil=False, seed=0):
    keras.utils.set_random_seed(seed)
    return kp.models.small_cnn((28, 28, 1), pnil=pnil, seed=seed, filters=(4, 8), dense_units=32)


def _compile(trainer):
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return trainer


@pytest.fixture(scope="module")
def batch(mnist):
    (x, y), _ = mnist
    return tf.constant(x[:64]), tf.constant(y[:64])


def _apply(method, batch, **options):
    model = _tiny()
    x, y = batch
    return get_perturbation(method, EPS, **options)(model, x, y).numpy(), x.numpy()


@pytest.mark.parametrize("method", ["fgsm", "rfgsm", "pgd"])
def test_projected_methods_stay_in_the_eps_ball_and_pixel_range(method, batch):
    adv, x = _apply(method, batch)
    assert np.abs(adv - x).max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert np.abs(adv - x).max() > 0.5 * EPS  # it did move


def test_nfgsm_is_not_projected_and_noise_multiplier_widens_it(batch):
    adv, x = _apply("nfgsm", batch)
    assert adv.min() >= 0 and adv.max() <= 1
    assert EPS + 1e-3 < np.abs(adv - x).max() <= 2 * EPS + 1e-6
    wide, _ = _apply("nfgsm", batch, noise_multiplier=2.0)
    assert 2 * EPS + 1e-3 < np.abs(wide - x).max() <= 3 * EPS + 1e-6


@pytest.mark.parametrize("method, options, message", [
    ("pgd2", {}, "Unknown training method 'pgd2'"),
    ("nfgsm", {"epsilon": 0.0}, "epsilon must be a number in .*; got 0.0"),
    ("nfgsm", {"epsilon": 1.0}, "got 1.0"),
    ("rfgsm", {"alpha": -0.1}, "alpha must be a positive number; got -0.1"),
    ("pgd", {"step_size": 0}, "step_size must be a positive number; got 0"),
    ("pgd", {"steps": 0}, "steps must be an integer >= 1; got 0"),
    ("nfgsm", {"eot_samples": 0}, "eot_samples must be an integer >= 1; got 0"),
    ("fgsm", {"alpha": 0.1}, "Bad option for method 'fgsm'"),
])
def test_bad_options_are_rejected(method, options, message):
    epsilon = options.pop("epsilon", EPS)
    with pytest.raises(ValueError, match=message):
        kp.adversarial(_tiny(), method, epsilon, **options)


def test_inputs_outside_unit_range_are_reported(mnist):
    (x, y), _ = mnist
    trainer = _compile(kp.adversarial(_tiny(), "nfgsm", EPS))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        trainer.fit(x[:100] * 255, y[:100], epochs=1, verbose=0)


@pytest.mark.parametrize("method", ["clean", "fgsm", "rfgsm", "nfgsm", "pgd"])
def test_fit_trains_with_each_method_and_saves_a_plain_model(method, mnist, tmp_path):
    (x, y), (xt, yt) = mnist
    model = _tiny(pnil=method == "nfgsm")
    trainer = _compile(kp.adversarial(model, method, EPS, **({"steps": 2} if method == "pgd" else {})))
    history = trainer.fit(x[:600], y[:600], batch_size=100, epochs=2, verbose=0, validation_data=(xt[:200], yt[:200]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert {"val_loss", "val_accuracy", "val_clean_loss", "val_clean_accuracy"} <= set(history.history)
    assert "clean_loss" not in history.history  # validation-only metrics stay out of the training logs
    if method != "clean":  # validation loss is the adversarial one
        assert history.history["val_loss"][-1] > history.history["val_clean_loss"][-1]
    trainer.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded) is not kp.AdversarialModel
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_adversarial_model_subclass_builds_functionally():
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))
    model = kp.AdversarialModel(inputs, outputs, method="rfgsm", epsilon=EPS)
    assert model.perturbation.alpha == pytest.approx(1.2 * EPS)
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no defined inputs"):
        kp.adversarial(unbuilt)


def _fit_under(strategy, method, x, y, epsilon=EPS):
    with strategy.scope():
        trainer = _compile(kp.adversarial(_tiny(seed=1), method, epsilon))
    keras.utils.set_random_seed(1)
    trainer.fit(kp.data.make_dataset(x, y, batch_size=100, shuffle=False), epochs=2, verbose=0)
    return trainer


def test_mirrored_strategy_matches_one_device(mnist):
    (x, y), (xt, yt) = mnist
    one, two = tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # Deterministic method: the all-reduced gradients equal the single-device ones up to float rounding.
    a, b = _fit_under(one, "fgsm", x[:1000], y[:1000]), _fit_under(two, "fgsm", x[:1000], y[:1000])
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-4)
    # NFGSM draws its noise per replica, so runs differ; their accuracies agree within 5 points.
    a, b = (_fit_under(s, "nfgsm", x[:2000], y[:2000], epsilon=8 / 255) for s in (one, two))
    acc = [kp.evaluation.accuracy(t, xt[:1000], yt[:1000]) for t in (a, b)]
    print("NFGSM accuracy on one device and on two replicas", acc)
    # Both learned (chance is 0.1; 0.60 and 0.61 here since NFGSM's gradient sees only valid images).
    assert min(acc) > 0.5 and abs(acc[0] - acc[1]) < 0.05


def test_nfgsm_reaches_high_pgd_accuracy_on_mnist(trained_pair, mnist):
    # Budget: 3,000 training images, 2 epochs, 8/16-filter CNN; PGD-20 on 300 test images, EOT 4 for PNIL.
    _, (xt, yt) = mnist
    for pnil, model in trained_pair.items():
        x_adv = kp.pgd(model, xt[:300], yt[:300], 8 / 255, steps=20, eot_samples=4 if pnil else 1)
        assert kp.evaluation.accuracy(model, x_adv, yt[:300], draws=3) > 0.75




def _hand_case(monkeypatch, method, **options):
    """x = (0, 0.5), fixed noise u = (-0.2, 0.1), ε = 0.3, and a model whose loss gradient is
    (+, -) at x + u but (0, -) once x + u is clipped to [0, 1]: logits (-z0² - z1, 0), label 1."""
    monkeypatch.setattr("keras_pnil.training._uniform", lambda x, radius: tf.constant([[-0.2, 0.1]]) * radius / 0.3)
    model_fn = lambda z: tf.stack([-z[:, 0] ** 2 - z[:, 1], tf.zeros_like(z[:, 0])], axis=1)  # noqa: E731
    return get_perturbation(method, 0.3, **options)(model_fn, tf.constant([[0.0, 0.5]]), tf.constant([1])).numpy()


def test_rfgsm_is_wong_et_als_fgsm_rs_on_a_hand_computed_case(monkeypatch):
    # Gradient at the unclipped x + u = (-0.2, 0.6): signs (+1, -1); δ = clip(u + 0.375·(1, -1), ±0.3)
    # = (0.175, -0.275); x + δ = (0.175, 0.225). (Clipping the start first would give (0, 0.225).)
    np.testing.assert_allclose(_hand_case(monkeypatch, "rfgsm", alpha=0.375), [[0.175, 0.225]], atol=1e-6)


def test_nfgsm_takes_its_gradient_at_the_clipped_noisy_point(monkeypatch):
    # de Jorge et al.: x_n = clip(x + u, 0, 1) = (0, 0.6), where the gradient's signs are (0, -1);
    # x_n + 0.3·(0, -1) = (0, 0.3). (The gradient at the unclipped point would give (0.1, 0.3).)
    np.testing.assert_allclose(_hand_case(monkeypatch, "nfgsm"), [[0.0, 0.3]], atol=1e-6)


@pytest.mark.parametrize("early_stop, expected", [(True, [[0.6, 0.5], [0.1, 0.5]]), (False, [[0.6, 0.5], [0.0, 0.5]])])
def test_pgd_early_stop_moves_only_images_still_classified_right(monkeypatch, early_stop, expected):
    # Class 0 iff z0 > 0.5; both labels 0; no random start. The first image is right throughout its three
    # steps of 0.1 (0.9 → 0.6); the second is wrong from the start: Wong et al.'s PGD training leaves it.
    monkeypatch.setattr("keras_pnil.training._uniform", lambda x, radius: tf.zeros_like(x))
    model_fn = lambda z: tf.stack([10 * z[:, 0] - 5, tf.zeros_like(z[:, 0])], axis=1)  # noqa: E731
    pgd = get_perturbation("pgd", 0.3, steps=3, step_size=0.1, early_stop=early_stop)
    adv = pgd(model_fn, tf.constant([[0.9, 0.5], [0.1, 0.5]]), tf.constant([0, 0])).numpy()
    np.testing.assert_allclose(adv, expected, atol=1e-6)
