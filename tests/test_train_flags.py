"""Every flag of `keras-pnil-train` reaches its setting: the run's configuration, the built trainer, or the run
directory it writes."""

import json

import numpy as np
import pytest

from keras_pnil import cli, recipe, runs
from keras_pnil.layers import find_pnil
from keras_pnil.schedules import CyclicalLearningRate, OneCycleLearningRate


@pytest.fixture
def configure(monkeypatch, tmp_path):
    """`configure(*flags)`: the configuration `train_main` would train, without training it."""
    def run(*flags):
        seen = []
        monkeypatch.setattr(runs, "train_run", lambda config, out: seen.append((config, out)) or "trained")
        assert cli.train_main([*flags, "--out", str(tmp_path / "run")]) == 0
        assert len(seen) == 1 and seen[0][1] == tmp_path / "run"
        return seen[0][0]

    return run


# (flags, configuration key, value): each value differs from the default, so a flag that is dropped shows.
FLAGS = [
    (["--dataset", "fashion_mnist"], "dataset", "fashion_mnist"),
    (["--data-dir", "/data"], "data_dir", "/data"),
    (["--architecture", "wong_mnist"], "architecture", "wong_mnist"),
    (["--method", "rfgsm"], "method", "rfgsm"),
    (["--pnil"], "pnil", True),
    (["--epsilon", "0.1"], "epsilon", 0.1),
    (["--epsilon", "4/255"], "epsilon", 4 / 255),
    (["--norm", "l2", "--epsilon", "2"], "norm", "l2"),
    (["--epochs", "3"], "epochs", 3),
    (["--batch-size", "50"], "batch_size", 50),
    (["--seed", "7"], "seed", 7),
    (["--strategy", "mirrored"], "strategy", "mirrored"),
    (["--mixed-precision"], "mixed_precision", True),
    (["--train-size", "500"], "train_size", 500),
    (["--validation-size", "100"], "validation_size", 100),
    (["--fold", "3"], "fold", 3),
    (["--lr-schedule", "one_cycle"], "lr_schedule", "one_cycle"),
    (["--base-lr", "2e-4"], "base_lr", 2e-4),
    (["--max-lr", "2e-3"], "max_lr", 2e-3),
    (["--lr-range-test"], "lr_range_test", True),
    (["--eot-samples", "4"], "eot_samples", 4),
    (["--noise-multiplier", "2"], "noise_multiplier", 2.0),
    (["--method", "rfgsm", "--alpha", "0.05"], "alpha", 0.05),
    (["--alpha-ratio", "1.25"], "alpha_ratio", 1.25),
    (["--pgd-steps", "3"], "pgd_steps", 3),
    (["--pgd-early-stop"], "pgd_early_stop", True),
    (["--method", "gradalign", "--gradalign-lambda", "0.5"], "gradalign_lambda", 0.5),
    (["--elle-lambda", "500"], "elle_lambda", 500.0),
    (["--elle-adaptive"], "elle_adaptive", True),
    (["--trades-beta", "6"], "trades_beta", 6.0),
    (["--trades-steps", "10"], "trades_steps", 10),
    (["--trades-step-size", "0.03"], "trades_step_size", 0.03),
    (["--pnil-lr-multiplier", "10"], "pnil_lr_multiplier", 10.0),
    (["--pnil-bias", "-1"], "pnil_bias", -1.0),
    (["--patience", "2"], "patience", 2),
    (["--min-delta", "0.05"], "min_delta", 0.05),
    (["--monitor-images", "50"], "monitor_images", 50),
    (["--monitor-eot", "2"], "monitor_eot", 2),
    (["--early-stop"], "early_stop", True),
    (["--checkpoint", "last"], "checkpoint", "last"),
    (["--lr-schedule", "cyclic_lr"], "lr_schedule", "cyclic_lr"),
    (["--optimizer", "sgd"], "optimizer", "sgd"),
    (["--momentum", "0.5"], "momentum", 0.5),
    (["--optimizer", "sgd", "--weight-decay", "5e-4"], "weight_decay", 5e-4),
    (["--augment", "crop_flip"], "augment", "crop_flip"),
    (["--early-stop-rule", "wong"], "early_stop_rule", "wong"),
    (["--depth", "28"], "depth", 28),
    (["--width", "2"], "width", 2),
]


@pytest.mark.parametrize("flags, key, value", FLAGS, ids=[" ".join(f[0]) for f in FLAGS])
def test_each_flag_sets_its_configuration_key(configure, flags, key, value):
    assert runs.TRAIN_DEFAULTS[key] != value
    got = configure(*flags)[key]
    assert got == (pytest.approx(value) if isinstance(value, float) else value) and type(got) is type(value)


def test_every_configuration_key_has_a_flag():
    covered = {key for _, key, _ in FLAGS}
    assert set(runs.TRAIN_DEFAULTS) == covered
    assert {f"--{key.replace('_', '-')}" for key in covered} <= set(cli.train_parser()._option_string_actions)


@pytest.mark.parametrize("flags, options", [
    (["--method", "nfgsm", "--eot-samples", "4", "--noise-multiplier", "2"],
     {"eot_samples": 4, "noise_multiplier": 2.0}),
    (["--method", "rfgsm", "--epsilon", "0.1", "--alpha", "0.05"], {"alpha": 0.05}),
    (["--method", "rfgsm", "--epsilon", "0.1", "--alpha-ratio", "1.25"], {"alpha": 0.125}),
    (["--method", "rfgsm", "--epsilon", "0.1"], {"alpha": pytest.approx(0.12)}),  # the paper's 1.2ε
    (["--method", "pgd", "--pgd-steps", "3", "--pgd-early-stop"], {"steps": 3, "early_stop": True}),
])
def test_method_flags_reach_the_built_perturbation(configure, flags, options):
    trainer = recipe.build_trainer(configure(*flags))
    assert {name: getattr(trainer.perturbation, name) for name in options} == options


def test_model_flags_reach_the_built_network(configure):
    trainer = recipe.build_trainer(configure("--architecture", "wong_mnist", "--pnil", "--pnil-bias", "-1"))
    np.testing.assert_array_equal(find_pnil(trainer).bias.numpy(), -1.0)
    assert trainer.name.startswith("wong_mnist")
    assert recipe.build_trainer(configure("--dataset", "fashion_mnist")).name == "small_cnn"
    assert find_pnil(recipe.build_trainer(configure("--pnil", "--no-pnil"))) is None


def test_schedule_flags_reach_the_learning_rate(configure):
    cyclical = recipe.learning_rate(configure("--base-lr", "2e-4", "--max-lr", "2e-3"), steps_per_epoch=30)
    assert isinstance(cyclical, CyclicalLearningRate)
    assert (cyclical.base_lr, cyclical.max_lr, cyclical.step_size) == (2e-4, 2e-3, 60)  # half-cycles of 2 epochs
    one_cycle = recipe.learning_rate(configure("--lr-schedule", "one_cycle", "--max-lr", "5e-3", "--epochs", "4"),
                                     steps_per_epoch=30)
    assert isinstance(one_cycle, OneCycleLearningRate)
    assert (one_cycle.max_lr, one_cycle.total_steps) == (5e-3, 120)


def test_the_pnil_learning_rate_multiplier_reaches_the_optimizer(configure):
    config = configure("--pnil", "--pnil-lr-multiplier", "10")
    trainer = recipe.build_trainer(config)
    recipe.compile_trainer(trainer, recipe.learning_rate(config, 10), config["pnil_lr_multiplier"])
    assert trainer.optimizer.multipliers == {"pnil/": 10.0}


def test_a_config_file_is_read_and_a_flag_overrides_it(configure, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"method": "rfgsm", "epochs": 4, "alpha_ratio": 1.25, "epsilon": "0.1"}))
    config = configure("--config", str(path), "--epochs", "1")
    assert (config["method"], config["epochs"], config["epsilon"]) == ("rfgsm", 1, 0.1)
    assert config["method_options"] == {"alpha": 0.125}
    shipped = configure("--config", "fashion_mnist_nfgsm", "--epsilon", "0.05")
    assert (shipped["dataset"], shipped["method"], shipped["epsilon"]) == ("fashion_mnist", "nfgsm", 0.05)


def test_force_retrains_a_finished_run(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.DONE).write_text('{"summary": "done before"}')
    trained = []
    monkeypatch.setattr(runs, "train_run", lambda config, out: trained.append(out) or "trained")
    assert cli.train_main(["--out", str(out)]) == 0 and trained == []
    assert "holds a finished run" in capsys.readouterr().out
    assert cli.train_main(["--out", str(out), "--force"]) == 0 and trained == [out]


def test_run_time_flags_show_in_the_run_directory(data_dir, tmp_path):
    # One tiny real run: the range test, the collapse monitor's state, the last weights kept (no best/).
    out = tmp_path / "run"
    flags = ["--data-dir", str(data_dir), "--method", "fgsm", "--train-size", "300", "--validation-size", "60",
             "--epochs", "1", "--seed", "7", "--monitor-images", "20", "--monitor-eot", "2", "--lr-range-test",
             "--early-stop", "--checkpoint", "last", "--patience", "3", "--out", str(out)]
    assert cli.train_main(flags) == 0
    config = json.loads((out / runs.CONFIG).read_text())
    assert config["seed"] == 7 and config["n_train"] == 300 and len(config["validation_indices"]) == 60
    assert config["lr_bounds"] == "range test" and (out / runs.LR_RANGE_TEST).exists()
    assert config["base_lr"] == pytest.approx(config["max_lr"] / 4) != runs.TRAIN_DEFAULTS["base_lr"]
    # The seed drew the validation half (and the training subset): seed 0 would have drawn other images.
    assert config["validation_indices"] != runs.training_indices({**config, "seed": 0}, 60000, 10000)[1].tolist()
    assert (out / runs.MONITOR / "previous.weights.h5").exists()  # kept only to undo a collapse (--early-stop)
    assert not (out / runs.BEST).exists()  # --checkpoint last
    assert (config["monitor_eot"], config["monitor_images"], config["patience"]) == (2, 20, 3)
