"""Every flag of `keras-pnil-reproduce` reaches the suite run (which is replaced here by a spy: nothing trains)."""

import json

import pytest

from keras_pnil import cli, reproduce

SUITE = {
    "title": "flags", "datasets": {"mnist": {}, "fashion_mnist": {}}, "default_budget": "small",
    "default_datasets": ["fashion_mnist"],
    "methods": {"nfgsm": {"config": "{dataset}_nfgsm"}}, "pnil": [False], "attacks": ["pgd"],
    "budgets": {budget: {"about": "a test budget", "folds": [0],
                         "train": {"train_size": 100, "epochs": 1, "validation_size": 50, "monitor_images": 10},
                         "evaluate": {"num_images": 10, "pgd_steps": 2, "eot_samples": 2, "accuracy_draws": 2},
                         "figures": {"images": 10, "pgd_steps": 2, "eot_samples": [1, 2], "eot": 2,
                                     "epsilon_multiples": [1, 2]}}
                for budget in ("small", "other")},
}


@pytest.fixture
def spied(monkeypatch, tmp_path):
    """Runs `reproduce_main(flags)` with the suite run and the throughput measurement replaced by spies."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(SUITE))
    calls = {"run_suite": [], "throughput": []}
    monkeypatch.setattr(reproduce, "run_suite", lambda *args, **kwargs: calls["run_suite"].append((args, kwargs)))
    monkeypatch.setattr(reproduce, "forward_throughput",
                        lambda dataset, architecture=None, batch_size=1000:
                        calls["throughput"].append(dataset) or 1000.0)

    def run(*flags):
        assert cli.reproduce_main(["--suite", str(path), *flags]) == 0
        return calls

    return run


def test_suite_budget_datasets_and_directories_reach_the_run(spied, tmp_path):
    calls = spied("--budget", "other", "--datasets", "mnist,fashion_mnist", "--data-dir", "/data",
                  "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"))
    [(args, kwargs)] = calls["run_suite"]
    suite, budget, datasets, runs_root, results_root, data_dir, name = args
    assert (suite["title"], budget, datasets) == ("flags", "other", ["mnist", "fashion_mnist"])
    assert (runs_root, results_root, data_dir, name) == (str(tmp_path / "runs"), str(tmp_path / "results"),
                                                          "/data", "flags")
    assert kwargs == {} and sorted(calls["throughput"]) == ["fashion_mnist", "mnist"]  # estimated first


def test_without_flags_the_suite_defaults_apply(spied):
    [(args, _)] = spied()["run_suite"]
    assert args[1:3] == ("small", ["fashion_mnist"]) and args[3:6] == ("runs/reproduce", "docs/results", None)


def test_estimate_only_stops_before_the_run(spied, capsys):
    calls = spied("--estimate-only", "--datasets", "mnist")
    assert calls["run_suite"] == [] and calls["throughput"] == ["mnist"]
    assert "estimate: mnist: 1 runs, about" in capsys.readouterr().out


def test_report_only_measures_nothing_and_asks_for_the_report(spied):
    calls = spied("--report-only")
    [(args, kwargs)] = calls["run_suite"]
    assert kwargs == {"report_only": True} and calls["throughput"] == []


def test_debug_shows_the_traceback(spied):
    with pytest.raises(reproduce.SuiteError, match="has no budget 'huge'"):
        spied("--budget", "huge", "--debug")
