import keras
import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil.schedules import CyclicalLearningRate, MultipliedAdam, suggest_bounds


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
    keras.utils.set_random_seed(0)
    trainer = kp.adversarial(kp.models.small_cnn(seed=0, filters=(4, 8), dense_units=32), "nfgsm", 0.1)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-5), steps_per_execution=1,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history, (low, high) = kp.schedules.lr_range_test(trainer, kp.data.make_dataset(x[:2000], y[:2000]))
    assert len(history) == 20 and history[-1][0] > history[0][0] and 1e-5 <= low < high <= 1.0001e-1


def test_one_cycle_rises_to_its_peak_at_two_fifths_and_ends_at_zero():
    schedule = kp.schedules.OneCycleLearningRate(5e-3, total_steps=100)
    rates = {step: float(schedule(step)) for step in (0, 19, 39, 69, 99)}
    # The rate after step + 1 updates, as Wong et al. set it: np.interp(t, [0, 0.4, 1], [0, max, 0]).
    expected = {s: float(np.interp((s + 1) / 100, [0, 0.4, 1], [0, 5e-3, 0])) for s in rates}
    assert rates == pytest.approx(expected, abs=1e-9)
    assert kp.schedules.OneCycleLearningRate.from_config(schedule.get_config()).total_steps == 100
    with pytest.raises(ValueError, match="peak_fraction=1.5"):
        kp.schedules.OneCycleLearningRate(1e-3, 10, peak_fraction=1.5)


def test_multiplied_adam_moves_the_pnil_by_the_multiple_and_the_rest_as_adam():
    # Adam's first step moves every variable with a non-zero gradient by exactly its learning rate.
    def first_step(multiplier):
        keras.utils.set_random_seed(0)
        model = kp.models.small_cnn(pnil=True, seed=0, filters=(4, 8), dense_units=16)
        model.compile(optimizer=MultipliedAdam({"pnil/": multiplier}, learning_rate=1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = {w.path: w.numpy().copy() for w in model.trainable_weights}
        x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype("float32")
        model.train_on_batch(x, np.arange(8))
        return {w.path: np.abs(w.numpy() - before[w.path]).max() for w in model.trainable_weights}

    plain, tenfold = first_step(1.0), first_step(10.0)
    assert tenfold["pnil/bias"] == pytest.approx(10 * plain["pnil/bias"], rel=1e-3)
    assert plain["pnil/bias"] == pytest.approx(1e-3, rel=1e-2)
    assert tenfold["logits/kernel"] == pytest.approx(plain["logits/kernel"], rel=1e-6)
    with pytest.raises(ValueError, match="multipliers must be positive numbers; got 'pnil/': 0"):
        MultipliedAdam({"pnil/": 0})
