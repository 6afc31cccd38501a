import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks import input_gradient
from keras_pnil.callbacks import CatastrophicOverfittingMonitor
from keras_pnil.schedules import CyclicalLearningRate, suggest_bounds
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


def test_input_gradient_samples_are_summed_in_one_pass(batch):
    model = _tiny()
    x, y = batch
    one = input_gradient(model, x, y).numpy()
    np.testing.assert_allclose(input_gradient(model, x, y, samples=3).numpy(), 3 * one, rtol=1e-4, atol=1e-6)


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


def test_cyclical_learning_rate_is_triangular():
    schedule = CyclicalLearningRate(1e-4, 1e-3, step_size=10)
    values = [float(schedule(s)) for s in (0, 5, 10, 15, 20, 30)]
    np.testing.assert_allclose(values, [1e-4, 5.5e-4, 1e-3, 5.5e-4, 1e-4, 1e-3], rtol=1e-5)
    with pytest.raises(ValueError, match="base_lr=0.01, max_lr=0.001"):
        CyclicalLearningRate(1e-2, 1e-3, 10)


def test_range_test_suggests_the_rate_before_the_loss_rises(mnist):
    rates = np.linspace(1e-5, 1e-1, 100)
    losses = np.concatenate([np.linspace(2.3, 0.5, 60), np.linspace(0.5, 5.0, 39), [np.nan]])
    base, top = suggest_bounds(rates, losses, smoothing=0.0)
    assert top == pytest.approx(rates[59]) and base == pytest.approx(top / 4)
    (x, y), _ = mnist
    trainer = kp.adversarial(_tiny(), "nfgsm", EPS)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-5),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history, (low, high) = kp.schedules.lr_range_test(trainer, kp.data.make_dataset(x[:2000], y[:2000]))
    assert len(history) == 20 and history[-1][0] > history[0][0] and 1e-5 <= low < high <= 1.0001e-1


def test_overfitting_monitor_logs_pgd_accuracy_and_stops_on_collapse(mnist, monkeypatch):
    (x, y), _ = mnist
    trainer = _compile(kp.adversarial(_tiny(), "fgsm", EPS))
    monitor = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2, early_stop=True)
    history = trainer.fit(x[:200], y[:200], epochs=2, verbose=0, callbacks=[monitor])
    assert len(history.history["pgd_val_accuracy"]) == 2
    # Simulate a collapse: PGD accuracy 0.9, then 0.05; training stops at epoch 2 with epoch 1's weights.
    readings = iter([0.9, 0.05, 0.9])
    monkeypatch.setattr("keras_pnil.evaluation.accuracy", lambda *a, **k: next(readings))
    weights = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, l: weights.append(trainer.get_weights()))
    fresh = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2, early_stop=True)
    history = trainer.fit(x[:200], y[:200], epochs=5, verbose=0, callbacks=[fresh, keep])
    assert len(history.history["loss"]) == 2
    for a, b in zip(trainer.get_weights(), weights[0], strict=True):
        np.testing.assert_array_equal(a, b)


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
    assert min(acc) > 0.6 and abs(acc[0] - acc[1]) < 0.05


def test_nfgsm_reaches_high_pgd_accuracy_on_mnist(trained_pair, mnist):
    # Budget: 3,000 training images, 2 epochs, 8/16-filter CNN; PGD-20 on 300 test images, EOT 4 for PNIL.
    _, (xt, yt) = mnist
    for pnil, model in trained_pair.items():
        x_adv = kp.attacks.pgd(model, xt[:300], yt[:300], 8 / 255, steps=20, eot_samples=4 if pnil else 1)
        assert kp.evaluation.accuracy(model, x_adv, yt[:300], draws=3) > 0.75


def _train_cli(out, data_dir, *extra):
    cmd = [sys.executable, "-m", "keras_pnil.cli", "--data-dir", str(data_dir), "--dataset", "mnist", "--method", "nfgsm", "--pnil",
           "--train-size", "1000", "--validation-size", "200", "--monitor-images", "50", "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "1"})


def test_killed_training_resumes_from_its_last_epoch(tmp_path, data_dir):
    out = tmp_path / "run"
    proc = _train_cli(out, data_dir, "--epochs", "3")
    history = out / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().strip().splitlines()) >= 2:  # one epoch done
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training finished before it could be interrupted:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(history.read_text().strip().splitlines()) - 1
    assert not (out / "model.keras").exists() and (out / "backup").exists()
    resumed = _train_cli(out, data_dir, "--epochs", "3")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    epochs = [int(line.split(",")[0]) for line in history.read_text().strip().splitlines()[1:]]
    assert epochs == [0, 1, 2] and done_before >= 1
    assert f"{3 - done_before} epochs this session" in output  # it did not start over
    for name in ("model.keras", "config.json", "best/best.weights.h5", "logs"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["pnil"] is True
    again = _train_cli(out, data_dir, "--epochs", "3")
    assert "holds a finished run" in again.communicate(timeout=120)[0]
