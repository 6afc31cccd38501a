"""The steady input pipeline and step batching of issue 29: tf.data autotuning off, 8 steps a call."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import pipeline


def _trainer(**compile_options):
    keras.utils.set_random_seed(0)
    trainer = kp.adversarial(kp.models.small_cnn(seed=0, filters=(2, 2), dense_units=8), "nfgsm", 0.1)
    trainer.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    **compile_options)
    return trainer


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)


def test_library_datasets_run_with_autotuning_off_and_an_owners_choice_is_kept():
    x, y = _images(10)
    assert kp.data.make_dataset(x, y, batch_size=4).options().autotune.enabled is False
    assert pipeline.array_dataset(x, y, batch_size=4).options().autotune.enabled is False
    assert pipeline.steady(tf.data.Dataset.range(3)).options().autotune.enabled is False
    chosen = tf.data.Options()
    chosen.autotune.enabled = True
    assert pipeline.steady(tf.data.Dataset.range(3).with_options(chosen)).options().autotune.enabled is True


def test_array_dataset_visits_every_image_once_an_epoch_in_a_new_order_in_batches_of_the_size_asked():
    x, y = _images(23)
    ids = np.arange(23)
    keras.utils.set_random_seed(0)  # a seeded run must still see a new order each epoch
    dataset = pipeline.array_dataset(x, ids, sample_weight=np.ones(23, "float32"), batch_size=5)
    assert int(dataset.cardinality()) == 5
    epochs = [[batch[1].numpy() for batch in dataset] for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert sorted(np.concatenate(batches).tolist()) == list(range(23))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    first = next(iter(pipeline.array_dataset(x.astype(np.float64), ids, batch_size=5, shuffle=False)))
    assert first[0].dtype == tf.float32 and np.array_equal(first[0].numpy(), x[:5])
    assert first[1].numpy().tolist() == [0, 1, 2, 3, 4]


def test_fit_arguments_hold_out_the_last_fraction_as_keras_does_and_batch_validation_arrays():
    x, y = _images(50)
    weights = np.linspace(0.5, 1.0, 50).astype(np.float32)
    arguments = pipeline.steady_fit_arguments(_trainer(), x, y, batch_size=8, epochs=2, validation_split=0.2,
                                              sample_weight=weights)
    held = [np.concatenate([batch[i].numpy() for batch in arguments["validation_data"]]) for i in range(3)]
    assert np.array_equal(held[0], x[40:]) and np.array_equal(held[1], y[40:]) and np.array_equal(held[2], weights[40:])
    trained = np.concatenate([batch[1].numpy() for batch in arguments["x"]])
    assert sorted(trained.tolist()) == sorted(y[:40].tolist())
    assert arguments["y"] is None and arguments["batch_size"] is None and arguments["epochs"] == 2
    arguments = pipeline.steady_fit_arguments(_trainer(), x, y, batch_size=8, validation_data=(x[:12], y[:12]))
    assert [len(b[1]) for b in arguments["validation_data"]] == [8, 4]


def test_fit_on_arrays_trains_and_validates_like_keras():
    x, y = _images(60)
    history = _trainer().fit(x, y, batch_size=10, epochs=2, validation_split=0.25, verbose=0)
    assert len(history.history["loss"]) == 2 and len(history.history["val_clean_accuracy"]) == 2
    assert all(np.isfinite(history.history["loss"]))


def test_compile_runs_eight_steps_a_call_unless_told_and_checks_the_count():
    assert _trainer().steps_per_execution == kp.training.STEPS_PER_EXECUTION == 8
    assert _trainer(steps_per_execution=1).steps_per_execution == 1
    with pytest.raises(ValueError, match="steps_per_execution"):
        _trainer(steps_per_execution=0)


def test_the_range_test_refuses_a_model_that_skips_batches():
    x, y = _images(40)
    with pytest.raises(ValueError, match="steps_per_execution=1"):
        kp.schedules.lr_range_test(_trainer(), kp.data.make_dataset(x, y, batch_size=10))


def test_compile_keeps_one_step_a_call_under_a_distribution_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        trainer = _trainer()
    assert trainer.steps_per_execution == 1


def test_adversarial_fit_hands_keras_steady_data_for_arrays_and_datasets(monkeypatch):
    seen = []
    def record(self, *args, **kwargs):
        seen.append({**dict(zip(("x", "y"), args, strict=False)), **kwargs})

    monkeypatch.setattr(keras.Model, "fit", record)
    x, y = _images(20)
    trainer = _trainer()
    trainer.fit(x, y, batch_size=5, validation_data=(x[:6], y[:6]))
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(5))
    for kwargs in seen:
        assert isinstance(kwargs["x"], tf.data.Dataset) and kwargs["x"].options().autotune.enabled is False
    assert seen[0]["validation_data"].options().autotune.enabled is False and seen[0]["y"] is None
