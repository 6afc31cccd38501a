import json

import keras
import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil.callbacks import BestCheckpoint, CatastrophicOverfittingMonitor, ConvergenceStop, PNILStatistics

EPS = 0.1


def _trainer(method="fgsm"):
    keras.utils.set_random_seed(0)
    trainer = kp.adversarial(kp.models.small_cnn(seed=0, filters=(4, 8), dense_units=32), method, EPS)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return trainer


def test_overfitting_monitor_logs_pgd_accuracy_and_stops_on_collapse(mnist, monkeypatch):
    (x, y), _ = mnist
    trainer = _trainer()
    monitor = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2, early_stop=True)
    history = trainer.fit(x[:200], y[:200], epochs=2, verbose=0, callbacks=[monitor])
    assert len(history.history["pgd_val_accuracy"]) == 2
    # Simulate a collapse: PGD accuracy 0.9, then 0.05; training stops at epoch 2 with epoch 1's weights.
    readings = iter([0.9, 0.05, 0.9])
    monkeypatch.setattr("keras_pnil.correctness.accuracy", lambda *a, **k: next(readings))
    weights = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(trainer.get_weights()))
    fresh = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2, early_stop=True)
    history = trainer.fit(x[:200], y[:200], epochs=5, verbose=0, callbacks=[fresh, keep])
    assert len(history.history["loss"]) == 2
    for a, b in zip(trainer.get_weights(), weights[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_best_checkpoint_keeps_the_lowest_value_across_sessions(mnist, tmp_path):
    (x, y), (xt, yt) = mnist
    trainer = _trainer("clean")
    checkpoint = BestCheckpoint(tmp_path / "best")
    checkpoint.set_model(trainer)
    trainer.fit(x[:200], y[:200], epochs=1, verbose=0)
    checkpoint.on_epoch_end(0, {"val_loss": 0.5})
    best_weights = trainer.get_weights()
    trainer.fit(x[:200], y[:200], epochs=1, verbose=0)
    # A new session (a resumed run) compares against the stored best, not against infinity.
    resumed = BestCheckpoint(tmp_path / "best")
    resumed.set_model(trainer)
    resumed.on_epoch_end(1, {"val_loss": 0.7})
    resumed.on_epoch_end(2, {"val_loss": float("nan")})
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"epoch": 1, "monitor": "val_loss",
                                                                         "value": 0.5}
    resumed.on_train_end()
    for a, b in zip(trainer.get_weights(), best_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_collapse_spanning_a_resume_is_still_seen(mnist, monkeypatch, tmp_path):
    (x, y), _ = mnist
    trainer = _trainer()
    readings = iter([0.9, 0.05])
    monkeypatch.setattr("keras_pnil.correctness.accuracy", lambda *a, **k: next(readings))
    first = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2, early_stop=True, state_dir=tmp_path)
    trainer.fit(x[:200], y[:200], epochs=1, verbose=0, callbacks=[first])
    before_collapse = trainer.get_weights()
    assert json.loads((tmp_path / "state.json").read_text())["best"] == 0.9
    # A new session (the command started again): the monitor reads the best so far and the weights back.
    resumed = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2, early_stop=True, state_dir=tmp_path)
    history = trainer.fit(x[:200], y[:200], epochs=3, verbose=0, callbacks=[resumed])
    assert len(history.history["loss"]) == 1 and resumed.collapsed_at == 1
    for a, b in zip(trainer.get_weights(), before_collapse, strict=True):
        np.testing.assert_array_equal(a, b)


def test_pnil_statistics_log_the_noise_on_object_and_background_every_epoch(mnist):
    _, (xt, _) = mnist
    model = kp.models.small_cnn(pnil=True, seed=0, filters=(4, 8), dense_units=16)
    layer = model.get_layer("pnil")
    callback, logs = PNILStatistics(layer, xt[:50]), {}
    callback.on_epoch_end(0, logs)
    assert logs["pnil_mean_bias"] == pytest.approx(-5.0) and logs["pnil_mean_abs_kernel"] == pytest.approx(0.0)
    assert logs["pnil_sigma_object"] == pytest.approx(np.exp(-2.5), rel=1e-4)  # σ = exp(B/2) with W = 0
    # A layer that learned Figure 1's structure: less noise where the digit is (W < 0: Σ falls with x).
    layer.kernel.assign(np.full(layer.kernel.shape, -4.0, np.float32))
    layer.bias.assign(np.full(layer.bias.shape, -1.0, np.float32))
    callback.on_epoch_end(1, logs)
    assert logs["pnil_sigma_object"] < 0.5 * logs["pnil_sigma_background"]
    assert logs["pnil_sigma_background"] == pytest.approx(np.exp(-0.5), rel=0.05)


def test_the_monitor_traces_its_attack_once_for_all_epochs(mnist):
    (x, y), _ = mnist
    trainer = _trainer()
    monitor = CatastrophicOverfittingMonitor(x[:50], y[:50], EPS, steps=2)
    trainer.fit(x[:200], y[:200], epochs=3, verbose=0, callbacks=[monitor])
    graphs = list(vars(trainer)["_keras_pnil_attack_graphs"].values())
    assert len(graphs) == 1 and graphs[0].experimental_get_tracing_count() == 1


def _feed(stop, losses, first_epoch=0):
    """Epoch ends with these validation losses; the epoch (1-based) it stopped after, or None."""
    for epoch, loss in enumerate(losses, first_epoch):
        stop.on_epoch_end(epoch, {"val_loss": loss})
        if stop.stopped_at:
            return stop.stopped_at
    return None


def test_convergence_stop_waits_patience_epochs_after_the_lowest_loss_even_across_sessions(tmp_path):
    losses = [1.0, 0.8, 0.85, 0.79, 0.80, 0.81, 0.795, 0.9, 0.7]
    stop = ConvergenceStop(4)
    stop.set_model(keras.Sequential())
    stop.on_train_begin()
    assert _feed(stop, losses) == 8 and stop.model.stop_training  # best 0.79 at epoch 4, four epochs without a new low
    # A run killed after epoch 5 and resumed: the epochs in its history count, so it stops at the same epoch.
    history = tmp_path / "history.csv"
    history.write_text("epoch,val_loss\n" + "".join(f"{i},{v}\n" for i, v in enumerate(losses[:5])))
    resumed = ConvergenceStop(4, history)
    resumed.set_model(keras.Sequential())
    resumed.on_train_begin()
    assert _feed(resumed, losses[5:], first_epoch=5) == 8
    fresh = ConvergenceStop(4, tmp_path / "absent.csv")  # a new run has no history yet
    fresh.set_model(keras.Sequential())
    fresh.on_train_begin()
    assert _feed(fresh, losses[5:], first_epoch=5) is None
    # With min_delta 5%, 0.79 is no new low after 0.8: it stops four epochs after epoch 2.
    tolerant = ConvergenceStop(4, min_delta=0.05)
    tolerant.set_model(keras.Sequential())
    tolerant.on_train_begin()
    assert _feed(tolerant, losses) == 6


def test_overfitting_monitor_logs_the_accuracy_under_its_own_pgd(mnist):
    # The logged value is the accuracy under PGD with the monitor's ε and steps (seeded: reproducible), not
    # the clean accuracy nor another number of steps, and a deterministic model gets no EOT entry.
    (x, y), _ = mnist
    trainer = _trainer("clean")  # a model that learns on any order of these 1,000 images (FGSM here may not)
    trainer.fit(x[:1000], y[:1000], epochs=2, verbose=0)
    xv, yv = x[-200:], y[-200:]
    monitor, logs = CatastrophicOverfittingMonitor(xv, yv, EPS, steps=5), {}
    monitor.set_model(trainer)
    monitor.on_train_begin()
    monitor.on_epoch_end(0, logs)
    accuracy = {steps: kp.accuracy(trainer, kp.pgd(trainer, xv, yv, EPS, steps=steps), yv) for steps in (1, 5)}
    print("PGD accuracy by steps", accuracy, "clean", kp.accuracy(trainer, xv, yv))
    assert logs == {"pgd_val_accuracy": accuracy[5]}
    assert accuracy[5] < accuracy[1] - 0.02 and accuracy[5] < kp.accuracy(trainer, xv, yv) - 0.1
