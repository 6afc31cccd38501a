import keras
import pytest

from keras_pnil import recipe, runs
from keras_pnil.schedules import CyclicalLearningRate, OneCycleLearningRate


def test_the_trainer_follows_the_configuration():
    config = runs.training_config({"dataset": "mnist", "method": "pgd", "pgd_steps": 3, "pnil": True})
    trainer = recipe.build_trainer(config)
    assert trainer.perturbation.steps == 3 and trainer.perturbation.epsilon == pytest.approx(8 / 255)
    assert trainer.get_layer("pnil") is not None
    schedule = recipe.learning_rate(config, steps_per_epoch=50)
    assert isinstance(schedule, CyclicalLearningRate) and schedule.step_size == 100  # half-cycles of 2 epochs
    recipe.compile_trainer(trainer, schedule)
    assert isinstance(trainer.optimizer, keras.optimizers.Adam)
    one_cycle = recipe.learning_rate(runs.training_config({"lr_schedule": "one_cycle", "epochs": 3}), 50)
    assert isinstance(one_cycle, OneCycleLearningRate) and one_cycle.total_steps == 150


def test_method_options_per_method():
    rfgsm = runs.training_config({"method": "rfgsm", "epsilon": 0.1})
    assert recipe.method_options(rfgsm) == {"alpha": pytest.approx(0.12)}  # the paper's 1.2ε
    nfgsm = runs.training_config({"method": "nfgsm", "eot_samples": 4, "noise_multiplier": 2.0})
    assert recipe.method_options(nfgsm) == {"eot_samples": 4, "noise_multiplier": 2.0}
    assert recipe.method_options(runs.training_config({"method": "clean"})) == {}
