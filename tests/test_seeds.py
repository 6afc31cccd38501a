"""Results over seeds: the collapse rule, the per-method statistics, and the suite's seed axis."""

import json

import numpy as np
import pytest

from keras_pnil import reproduce, seeds, summary
from keras_pnil.reproduce import RunSpec


def test_collapse_rule_compares_the_final_epoch_with_half_the_best():
    assert seeds.collapsed([0.2, 0.76, 0.46, 0.08, 0.23]) is True  # 0.23 < 0.38
    assert seeds.collapsed([0.2, 0.76, 0.38]) is False  # exactly half is not below half
    assert seeds.collapsed([0.2, 0.76, 0.379]) is True
    assert seeds.collapsed([0.9, 0.1, 0.85]) is False  # a transient drop that recovered is not a collapse
    assert seeds.collapsed([]) is None
    assert seeds.collapsed([0.8, 0.5], fraction=0.7) is True and seeds.collapsed([0.8, 0.6], fraction=0.7) is False
    with pytest.raises(ValueError, match="collapse fraction"):
        seeds.collapsed([0.5], fraction=1.5)


def _study(curves: dict, accuracies: dict):
    """Specs, records and histories of one method over the seeds in `curves` (seed -> per-epoch PGD)."""
    specs = [RunSpec("mnist", "fgsm-rs", False, None, s) for s in curves]
    records = [{"clean": 0.98, "pgd": accuracies[s], "min": accuracies[s] - 0.01} for s in curves]
    histories = {spec.name: {seeds.COLLAPSE_CURVE: curves[spec.seed]} for spec in specs}
    return specs, records, histories


def test_over_seeds_counts_collapses_and_gives_mean_and_std_over_all_and_over_the_stable_runs():
    curves = {0: [0.7, 0.8, 0.1], 1: [0.7, 0.8, 0.79], 2: [0.6, 0.9, 0.88], 3: [0.5, 0.0, 0.0]}
    accuracies = {0: 0.05, 1: 0.81, 2: 0.85, 3: 0.0}
    specs, records, histories = _study(curves, accuracies)
    (row,) = seeds.over_seeds(specs, records, histories)
    assert row.seeds == (0, 1, 2, 3) and row.collapsed == (True, False, False, True) and row.collapse_count == 2
    mean, std, n = row.stats("pgd")
    assert n == 4 and mean == pytest.approx(np.mean([0.05, 0.81, 0.85, 0.0]))
    assert std == pytest.approx(np.std([0.05, 0.81, 0.85, 0.0], ddof=1))
    assert row.stats("pgd", stable_only=True) == pytest.approx((0.83, np.std([0.81, 0.85], ddof=1), 2))
    table = seeds.over_seeds_markdown([row])
    assert "| mnist | fgsm-rs | no | 0, 1, 2, 3 | 2 of 4 | 98.0 ± 0.0 | 42.8 ± " in table
    assert "83.0 ± 2.8 (n=2)" in table and "Min (not collapsed)" in table


def test_over_seeds_keeps_methods_pnil_and_data_sets_apart_and_sorts_seeds():
    specs = [RunSpec("mnist", "a", False, None, 1), RunSpec("mnist", "a", True, None, 0),
             RunSpec("mnist", "a", False, None, 0), RunSpec("fashion_mnist", "a", False, None, 0)]
    records = [{"clean": 0.9, "pgd": v} for v in (0.1, 0.2, 0.3, 0.4)]
    rows = seeds.over_seeds(specs, records, {})
    assert [(r.dataset, r.pnil, r.seeds) for r in rows] == [("mnist", False, (0, 1)), ("mnist", True, (0,)),
                                                           ("fashion_mnist", False, (0,))]
    assert rows[0].accuracies["pgd"] == (0.3, 0.1) and rows[0].collapsed == (None, None)
    assert "0 of 0" in seeds.over_seeds_markdown(rows)
    with pytest.raises(ValueError, match="one record per run"):
        seeds.over_seeds(specs, records[:2], {})


def _seed_suite(tmp_path, **extra):
    suite = {"title": "t", "datasets": {"mnist": {}}, "pnil": [False, True], "attacks": ["pgd"],
             "methods": {"a": {"config": "mnist_rfgsm"}, "b": {"config": "mnist_nfgsm", "pnil": [False]}},
             "budgets": {"tiny": {"about": "", "folds": [None], "train": {"epochs": 1}, "evaluate": {}}}, **extra}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(suite))
    return reproduce.load_suite(str(path))


def test_a_suite_with_seeds_runs_every_method_on_each_seed_seed_major_and_trains_with_it(tmp_path):
    suite = _seed_suite(tmp_path, seeds=[3, 7])
    specs = reproduce.grid(suite, "tiny")
    assert [s.name for s in specs] == ["mnist-a-seed3-baseline", "mnist-a-seed3-pnil", "mnist-b-seed3-baseline",
                                       "mnist-a-seed7-baseline", "mnist-a-seed7-pnil", "mnist-b-seed7-baseline"]
    assert [reproduce.train_config(suite, "tiny", s)["seed"] for s in specs] == [3, 3, 3, 7, 7, 7]
    # Without seeds: each method's own seed, and the names runs had before the axis existed.
    plain = _seed_suite(tmp_path)
    assert [s.name for s in reproduce.grid(plain, "tiny")] == ["mnist-a-baseline", "mnist-a-pnil", "mnist-b-baseline"]


@pytest.mark.parametrize("bad", [[], [0, 0], [-1], [1.5], [True]])
def test_bad_seeds_are_refused_with_the_fix(tmp_path, bad):
    with pytest.raises(reproduce.SuiteError, match="distinct non-negative integers"):
        reproduce.grid(_seed_suite(tmp_path, seeds=bad), "tiny")


def test_a_method_seed_and_a_seed_axis_together_are_refused(tmp_path):
    suite = _seed_suite(tmp_path, seeds=[0])
    suite["methods"]["a"]["seed"] = 5
    with pytest.raises(reproduce.SuiteError, match="sets a seed and the suite has"):
        reproduce.train_config(suite, "tiny", reproduce.grid(suite, "tiny")[0])


def test_the_co_study_suite_has_five_seeds_of_every_method(tmp_path):
    specs = reproduce.grid(reproduce.load_suite("co_study"), "full")
    assert len(specs) == 2 * 5 * (2 + 2 + 2)  # data sets x seeds x (two methods with and without PNIL, two without)
    assert {s.seed for s in specs} == {0, 1, 2, 3, 4}
    regularisers = reproduce.grid(reproduce.load_suite("co_study_regularisers"), "full")
    assert len(regularisers) == 2 * 5 * 2 and {s.method for s in regularisers} == {"gradalign", "elle"}
    assert {s.seed for s in regularisers} == {0, 1, 2, 3, 4}


def test_the_summary_has_a_collapsed_column_by_the_same_rule(tmp_path):
    spec = RunSpec("mnist", "a", False, None, 0)
    log = tmp_path / "history.csv"
    log.write_text("epoch,val_loss,pgd_val_accuracy\n0,0.5,0.6\n1,0.4,0.8\n2,0.4,0.3\n")
    assert summary.training_columns([spec], {spec.name: log}, {})[spec.name]["collapsed"] == "yes"
    log.write_text("epoch,val_loss,pgd_val_accuracy\n0,0.5,0.6\n1,0.4,0.8\n2,0.4,0.5\n")
    assert summary.training_columns([spec], {spec.name: log}, {})[spec.name]["collapsed"] == "no"


def test_the_estimate_times_each_runs_own_network_at_its_batch_size(monkeypatch):
    suite = reproduce.load_suite("co_study")
    specs = reproduce.grid(suite, "full", ["mnist"])
    measured = []
    monkeypatch.setattr(reproduce, "forward_throughput",
                        lambda dataset, architecture=None, batch_size=1000: measured.append(
                            (dataset, architecture, batch_size)) or 1000.0)
    rates = reproduce.measured_throughput(suite, "full", specs)
    assert measured == [("mnist", "wong_mnist", 100)] and rates == {("mnist", "wong_mnist"): 1000.0}
    slow = reproduce.estimate_cost(suite, "full", specs, rates)["mnist"]
    fast = reproduce.estimate_cost(suite, "full", specs, {("mnist", "wong_mnist"): 4000.0})["mnist"]
    assert slow == pytest.approx(4 * fast)


def test_compare_distributions_gives_fishers_exact_p_on_collapse_counts_by_hand():
    # 0 of 5 against 3 of 5 collapses: hypergeometric over C(10, 3) = 120 tables; the two tables at least as
    # extreme as the observed one (0 or 3 of our runs) have 10 ways each, so p = 20 / 120.
    ours = [(False, 0.8)] * 5
    reference = [(True, 0.0)] * 3 + [(False, 0.8)] * 2
    c = seeds.compare_distributions(ours, reference)
    assert (c.ours_collapsed, c.ours_runs, c.reference_collapsed, c.reference_runs) == (0, 5, 3, 5)
    assert c.collapse_p == pytest.approx(20 / 120)
    assert seeds.compare_distributions([(True, 0.0)] * 5, [(False, 0.8)] * 5).collapse_p == pytest.approx(2 / 252)
    assert seeds.compare_distributions(ours, ours).collapse_p == pytest.approx(1.0)


def test_compare_distributions_gives_exact_mann_whitney_p_over_all_and_over_the_runs_that_held():
    # Complete separation of 3 against 3: 2 of the C(6, 3) = 20 orderings are as extreme, p = 0.1.
    ours = [(False, 0.1), (False, 0.2), (False, 0.3)]
    reference = [(False, 0.4), (False, 0.5), (False, 0.6)]
    c = seeds.compare_distributions(ours, reference)
    assert c.accuracy_p == pytest.approx(0.1) and c.stable_p == pytest.approx(0.1)
    # Interleaved values: U = 4 of 9, the middle of the distribution, p = 1.
    interleaved = seeds.compare_distributions([(False, 0.1), (False, 0.4), (False, 0.5)],
                                              [(False, 0.2), (False, 0.3), (False, 0.6)])
    assert interleaved.accuracy_p == pytest.approx(1.0)
    # The stable comparison drops the collapsed runs: none left on our side, so it is None.
    only_collapsed = seeds.compare_distributions([(True, 0.0), (True, 0.01)], reference)
    assert only_collapsed.stable_p is None and only_collapsed.accuracy_p == pytest.approx(0.2)
    # Five against five, completely apart: the smallest p there is (2 / 252), which `matches` rejects.
    apart = seeds.compare_distributions([(False, 0.1 * i) for i in range(5)],
                                        [(False, 0.6 + 0.05 * i) for i in range(5)])
    assert apart.accuracy_p == pytest.approx(2 / 252) and not apart.matches() and apart.matches(level=0.005)
    assert seeds.compare_distributions([(False, 0.5)] * 2, [(False, 0.5)] * 2).accuracy_p == 1.0


def test_compare_distributions_rejects_empty_sides_and_bad_runs_in_one_line():
    with pytest.raises(ValueError, match="no runs in ours"):
        seeds.compare_distributions([], [(False, 0.5)])
    with pytest.raises(ValueError, match=r"reference has the run \(False, 85.0\)"):
        seeds.compare_distributions([(False, 0.5)], [(False, 85.0)])  # a percentage where a fraction belongs
    with pytest.raises(ValueError, match="collapsed: bool"):
        seeds.compare_distributions([(None, 0.5)], [(False, 0.5)])
