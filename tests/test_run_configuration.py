"""A run directory is resumed, reused or reported only under the configuration that made it."""

import json

import pytest

from keras_pnil import cli, reproduce, runs
from keras_pnil.files import atomic_write_json


def _stored(tmp_path, **options):
    config = runs.training_config({"dataset": "mnist", "architecture": "wong_mnist", **options})
    run = tmp_path / "run"
    run.mkdir()
    atomic_write_json(run / runs.CONFIG, {**config, "n_train": 60000, "validation_indices": [1, 2, 3],
                                          "data_dir": "/elsewhere"})
    return run


def test_the_same_configuration_has_no_changes_whatever_the_run_derived(tmp_path):
    run = _stored(tmp_path, method="gradalign", gradalign_lambda=0.2)
    asked = runs.training_config({"dataset": "mnist", "architecture": "wong_mnist", "method": "gradalign",
                                  "gradalign_lambda": 0.2, "data_dir": "/here"})
    assert runs.configuration_changes(asked, run) == []
    runs.check_same_run(asked, run)  # no error


def test_a_changed_method_option_is_named_with_both_values(tmp_path):
    run = _stored(tmp_path, method="gradalign", gradalign_lambda=2.0)
    asked = runs.training_config({"dataset": "mnist", "architecture": "wong_mnist", "method": "gradalign",
                                  "gradalign_lambda": 0.2})
    assert runs.configuration_changes(asked, run) == ["gradalign_lambda: 2.0 → 0.2"]
    with pytest.raises(runs.RunError, match=r"holds a run of another configuration \(gradalign_lambda: 2.0 → 0.2\): "
                                            r"train into a new directory, or delete this one"):
        runs.check_same_run(asked, run)


def test_another_methods_option_and_a_key_added_since_at_its_default_are_no_change(tmp_path):
    run = _stored(tmp_path, method="rfgsm")
    stored = json.loads((run / runs.CONFIG).read_text())
    del stored["elle_adaptive"]  # a run made before ELLE-A existed
    (run / runs.CONFIG).write_text(json.dumps(stored))
    asked = runs.training_config({"dataset": "mnist", "architecture": "wong_mnist", "method": "rfgsm",
                                  "elle_lambda": 5.0})  # not rfgsm's option
    assert runs.configuration_changes(asked, run) == []
    asked["seed"] = 1
    assert runs.configuration_changes(asked, run) == ["seed: 0 → 1"]


def test_the_train_command_refuses_to_resume_another_configuration(tmp_path, capsys, monkeypatch):
    run = _stored(tmp_path, method="rfgsm", epochs=3)
    monkeypatch.setattr(runs, "_fit", lambda *a, **k: pytest.fail("trained"))
    assert cli.train_main(["--dataset", "mnist", "--architecture", "wong_mnist", "--epochs", "4",
                           "--out", str(run)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epochs: 3 → 4" in err[0] and "train into a new directory" in err[0]


def test_a_suite_does_not_reuse_a_finished_run_it_no_longer_asks_for(tmp_path):
    suite = reproduce.load_suite("co_study_regularisers")
    spec = next(s for s in reproduce.grid(suite, "quick") if s.method == "gradalign")
    runs_dir = tmp_path / "co_study_regularisers" / "quick"
    config = reproduce.train_config(suite, "quick", spec)
    assert config["gradalign_lambda"] == 0.1  # the suite's, not the default
    (runs_dir / spec.name).mkdir(parents=True)
    atomic_write_json(runs_dir / spec.name / runs.CONFIG, {**config, "gradalign_lambda": 99.0})
    atomic_write_json(runs_dir / spec.name / runs.DONE, {"summary": "made with another lambda", "epochs": 2})
    with pytest.raises(runs.RunError, match="gradalign_lambda: 99.0 → "):
        reproduce.run_suite(suite, "quick", runs_root=tmp_path, results_root=tmp_path / "results",
                            suite_name="co_study_regularisers")
    with pytest.raises(runs.RunError, match="gradalign_lambda: 99.0 → "):
        reproduce.run_suite(suite, "quick", runs_root=tmp_path, results_root=tmp_path / "results",
                            suite_name="co_study_regularisers", report_only=True)


@pytest.mark.parametrize("cluster, task, index", [
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, 0),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, 1),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "chief", "index": 0}, 0),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "worker", "index": 0}, 1),  # not the chief's folder
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "worker", "index": 1}, 2),
    ({"worker": ["a:1"], "ps": ["b:1"]}, {"type": "ps", "index": 0}, None),
])
def test_a_multi_worker_training_process_writes_into_its_own_place(monkeypatch, tmp_path, cluster, task, index):
    from keras_pnil import recipe

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert recipe.worker_index() == index
    expected = tmp_path if not index else tmp_path / f"worker-{index}"
    assert runs._worker_directory(tmp_path, "multi_worker") == expected
