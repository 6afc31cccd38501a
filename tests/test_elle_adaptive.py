"""ELLE-A (Abad Rocamora et al.): λ's on/off rule against a hand computation, applied on training steps only,
kept in the trainer's saved state, and reached from the command's flag."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import cli, runs
from keras_pnil.methods.elle import DECAY, AdaptiveLambda


def _lambdas(errors, maximum=100.0):
    rule = AdaptiveLambda(maximum)
    return [float(rule.step(tf.constant(e, tf.float32))) for e in errors]


def test_lambda_is_zero_until_a_spike_then_the_maximum_then_decays():
    # History 1, 2, 3: mean 2, population std sqrt(2/3) = 0.816, threshold 2 + 2 * 0.816 = 3.63 < 10: a spike,
    # so the step after 10 trains with λ = 100. History 1, 2, 3, 10: mean 4, std sqrt(12.5) = 3.54, threshold
    # 11.07 > 4: no spike, λ decays by 0.99 a step.
    got = _lambdas([1.0, 2.0, 3.0, 10.0, 4.0, 4.0])
    assert got == pytest.approx([0.0, 0.0, 0.0, 0.0, 100.0, 100.0 * DECAY], rel=1e-6)


def test_no_spike_is_called_with_two_or_fewer_earlier_errors():
    assert _lambdas([1.0, 1.0, 50.0, 1.0]) == [0.0, 0.0, 0.0, 0.0]  # 50 comes after only 2 errors
    assert _lambdas([1.0, 1.0, 1.0, 50.0, 1.0])[-1] == 100.0  # after 3 it counts


def test_an_error_just_below_the_threshold_is_no_spike():
    # History 0, 2, 4: mean 2, std sqrt(8/3) = 1.633, threshold 5.266.
    assert _lambdas([0.0, 2.0, 4.0, 5.25, 1.0])[-1] == 0.0
    assert _lambdas([0.0, 2.0, 4.0, 5.28, 1.0])[-1] == 100.0


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    return kp.models.small_cnn((28, 28, 1), seed=seed, filters=(4, 8), dense_units=32)


def test_elle_a_trains_and_counts_training_steps_only(mnist):
    (x, y), (xt, yt) = mnist
    trainer = kp.adversarial(_tiny(), "elle", 0.3, lam=100.0, adaptive=True)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = trainer.fit(x[:400], y[:400], batch_size=50, epochs=2, verbose=0,
                          validation_data=(xt[:100], yt[:100]))
    lam, steps, total, _ = (float(v.numpy()) for v in trainer.perturbation.variables)
    assert steps == 2 * 400 / 50  # 16 training steps; the 2 × 2 validation batches do not enter the history
    assert total == pytest.approx(np.sum(history.history["elle"]) * 8, rel=0.05)  # the logged error, summed
    assert np.isfinite(history.history["loss"]).all() and 0.0 <= lam <= 100.0
    assert all(any(v is w for w in trainer.variables) for v in trainer.perturbation.variables)  # saved state


def test_the_plain_elle_has_no_state_and_a_constant_lambda():
    method = kp.methods.build("elle", 0.3, lam=5.0)
    assert method.variables == [] and method.adaptive is None


def test_elle_adaptive_flag_reaches_the_built_method(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(runs, "train_run", lambda config, out: seen.append(config) or "trained")
    assert cli.train_main(["--method", "elle", "--elle-adaptive", "--out", str(tmp_path / "run")]) == 0
    assert seen[0]["elle_adaptive"] is True and seen[0]["method_options"]["adaptive"] is True
    assert cli.train_main(["--method", "elle", "--out", str(tmp_path / "run2")]) == 0
    assert seen[1]["elle_adaptive"] is False
    json.dumps(seen[0])  # the run configuration stays JSON
