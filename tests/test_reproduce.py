import copy
import json

import pytest

from keras_pnil import reproduce

TINY_SUITE = {
    "title": "tiny grid", "datasets": {"mnist": {}, "fashion_mnist": {}},
    "methods": {"nfgsm": {"config": "{dataset}_nfgsm"},
                "clean": {"config": "{dataset}_nfgsm", "method": "clean", "pnil": [False]}},
    "pnil": [False, True], "attacks": ["pgd", "pgd-no-eot", "spsa", "autoattack"],
    "budgets": {"tiny": {
        "about": "a test budget", "folds": [0, 3],
        "train": {"train_size": 300, "epochs": 1, "validation_size": 100, "monitor_images": 20, "patience": 2},
        "evaluate": {"num_images": 20, "pgd_steps": 3, "spsa_steps": 2, "spsa_samples": 8, "spsa_images": 10,
                     "apgd_steps": 2, "square_queries": 10, "eot_samples": 2, "accuracy_draws": 2},
        "figures": {"images": 10, "pgd_steps": 2, "eot_samples": [1, 2], "eot": 2, "epsilon_multiples": [1, 2],
                    "training_curves": True}}},
}


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_SUITE))
    return path


def test_grid_and_train_arguments_follow_the_suite(suite_file, tmp_path):
    suite = reproduce.load_suite(str(suite_file))
    specs = reproduce.grid(suite, "tiny", ["mnist"])
    assert [s.name for s in specs] == ["mnist-nfgsm-baseline-fold0", "mnist-nfgsm-baseline-fold3",
                                       "mnist-nfgsm-pnil-fold0", "mnist-nfgsm-pnil-fold3",
                                       "mnist-clean-baseline-fold0", "mnist-clean-baseline-fold3"]
    config = reproduce.train_config(suite, "tiny", specs[2])
    assert config["fold"] == 0 and config["pnil"] is True and config["train_size"] == 300
    assert config["epsilon"] == pytest.approx(8 / 255) and config["method"] == "nfgsm"  # from train/mnist_nfgsm.json
    clean = reproduce.train_config(suite, "tiny", specs[4])
    assert clean["method"] == "clean" and clean["pnil"] is False
    assert len(reproduce.grid(reproduce.load_suite("table1"), "paper")) == 3 * 2 * 2 * 10
    large = reproduce.grid(reproduce.load_suite("large_eps"), "quick")
    assert len(large) == 2 * (4 * 2 + 2) and {s.method for s in large if s.pnil} == {"fgsm", "rfgsm", "nfgsm", "n-fgsm"}


def test_suite_errors_name_the_problem(suite_file, tmp_path):
    with pytest.raises(reproduce.SuiteError, match="has no budget 'huge'"):
        reproduce.grid(reproduce.load_suite(str(suite_file)), "huge")
    with pytest.raises(reproduce.SuiteError, match=r"unknown data set\(s\) \['svhn'\]"):
        reproduce.grid(reproduce.load_suite(str(suite_file)), "tiny", ["svhn"])
    with pytest.raises(reproduce.SuiteError, match="cannot read suite"):
        reproduce.load_suite("no_such_suite")
    broken = json.loads(suite_file.read_text())
    broken["budgets"]["tiny"]["train"]["epochs"] = 0
    suite_file.write_text(json.dumps(broken))
    spec = reproduce.grid(reproduce.load_suite(str(suite_file)), "tiny")[0]
    with pytest.raises(ValueError, match="epochs must be an integer >= 1; got 0"):
        reproduce.train_config(reproduce.load_suite(str(suite_file)), "tiny", spec)


def test_paper_budget_cost_is_estimated_before_starting():
    suite = reproduce.load_suite("table1")
    assert len(reproduce.grid(suite, "paper", ["mnist"])) == 40 and reproduce.forward_throughput("mnist") > 0
    throughput = reproduce.measured_throughput(suite, "quick", reproduce.grid(suite, "quick", ["mnist"]))
    quick = reproduce.estimate_cost(suite, "quick", reproduce.grid(suite, "quick", ["mnist"]), throughput)
    paper = reproduce.estimate_cost(suite, "paper", reproduce.grid(suite, "paper", ["mnist"]), throughput)
    assert paper["mnist"] > 100 * quick["mnist"]


def test_reproduce_writes_tables_and_figures_and_resumes(suite_file, tmp_path, data_dir):
    one_fold = copy.deepcopy(TINY_SUITE)
    one_fold["budgets"]["tiny"]["folds"] = [3]  # one fold keeps the test short
    suite_file.write_text(json.dumps(one_fold))
    def run():
        return reproduce.run_suite(reproduce.load_suite(str(suite_file)), "tiny", ["mnist"], tmp_path / "runs",
                                   tmp_path / "results", str(data_dir), "tiny")

    run()
    results = tmp_path / "results" / "tiny" / "tiny"
    summary = (results / "summary.md").read_text()
    assert "| MNIST | + PNIL | ours |" in summary and "| MNIST | baseline | paper | 98±0 | 23±36 |" in summary
    assert "REDUCED budget" in summary and "(EOT 2)" in summary and "Does the PNIL learn structure?" in summary
    assert "| mnist-clean-baseline-fold3 |" in summary and "× clean" in summary and "collapse without EOT" in summary
    for figure in ("fig1_pnil_mnist_nfgsm.png", "fig4_eot_mnist.png", "fig5_epsilon_mnist.png", "training_mnist.png"):
        assert (results / figure).stat().st_size > 5000
    table = json.loads((results / "table1.json").read_text())
    assert [r["fold"] for r in table["records"]] == [3, 3, 3]
    assert {r["method"] for r in table["records"]} == {"nfgsm", "clean"} and "autoattack" in table["records"][0]
    # A second run trains and evaluates nothing: finished runs and evaluations are reused.
    runs = tmp_path / "runs" / "tiny" / "tiny"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/model.keras")}
    stamps.update({p: p.stat().st_mtime_ns for p in (runs / "evaluation").glob("*.json")})
    run()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()) and len(stamps) == 6
    # --report-only: the runs evaluated so far, computing nothing (a missing evaluation stays missing).
    (runs / "evaluation" / "mnist-nfgsm-pnil-fold3.json").unlink()
    reproduce.run_suite(reproduce.load_suite(str(suite_file)), "tiny", ["mnist"], tmp_path / "runs",
                        tmp_path / "results", str(data_dir), "tiny", report_only=True)
    partial = (results / "summary.md").read_text()
    assert "**PARTIAL**: the 2 of the grid's 3 runs" in partial and "| mnist-nfgsm-pnil-fold3 |" not in partial
    # The budget states the training as run (read back from the run's config, not only from the evaluation).
    assert "trained to convergence: at most 1 epochs, stopped after 2 without a new best" in partial
    assert "![fig5_epsilon_mnist](fig5_epsilon_mnist.png)" in partial  # from the curves cached by the full run
    assert not (runs / "evaluation" / "mnist-nfgsm-pnil-fold3.json").exists()
