import pytest

from keras_pnil import experiments, reproduce


@pytest.mark.parametrize("name", sorted(p.stem for p in experiments.SUITES.glob("*.json")))
def test_every_shipped_suite_gives_valid_training_configurations(name):
    suite = reproduce.load_suite(name)
    for budget in suite["budgets"]:
        for spec in reproduce.grid(suite, budget):
            config = reproduce.train_config(suite, budget, spec)  # validated: raises on a bad option
            assert config["dataset"] == spec.dataset and config["pnil"] == spec.pnil


def test_names_and_paths_are_both_found(tmp_path):
    assert experiments.train_config_path("mnist_nfgsm") == experiments.TRAIN_CONFIGS / "mnist_nfgsm.json"
    assert experiments.train_config_path("train/mnist_nfgsm.json").name == "mnist_nfgsm.json"
    own = tmp_path / "mine.json"
    own.write_text("{}")
    assert experiments.suite_path(own) == own
    with pytest.raises(FileNotFoundError, match="no suite 'nope': not a file, and not one of the shipped"):
        experiments.suite_path("nope")
