import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

import keras_pnil as kp
from keras_pnil import report
from keras_pnil.stats import corrected_resampled_ttest, mean_std

TINY = dict(pgd_steps=10, spsa_steps=20, spsa_samples=128, spsa_images=40, accuracy_draws=2,
            spsa_learning_rate=0.05, spsa_delta=0.05, square_queries=200)


def test_robustness_reports_min_worst_case_and_flags_masking(masked_model, mnist):
    _, (xt, yt) = mnist
    result = kp.evaluation.robustness(masked_model, xt[:80], yt[:80], 0.3, seed=1, progress=lambda m: None, **TINY)
    assert result.effective == min(result.attacks.values())
    assert result.worst_case <= min(result.attacks["spsa"], result.clean) + 1e-9
    assert len(result.subset_indices) == 40
    flags = {c["check"]: c["flagged"] for c in result.checks}
    # Zero gradients: PGD cannot even reach ε = 0.5, and both gradient-free witnesses see through it.
    assert flags["spsa vs pgd"] and flags["square vs pgd"] and flags["large-ε PGD"]
    again = kp.evaluation.robustness(masked_model, xt[:80], yt[:80], 0.3, attacks=("pgd",), seed=1,
                                     checks=False, progress=lambda m: None, **TINY)
    assert again.subset_indices == result.subset_indices
    described = result.budget.describe()
    assert "REDUCED budget" in described and "Square 200 queries (masking witness)" in described
    assert "APGD" not in described  # only the attacks that ran are described


def test_robustness_does_not_flag_an_honest_model(trained_pair, mnist):
    _, (xt, yt) = mnist
    result = kp.evaluation.robustness(trained_pair[False], xt[:80], yt[:80], 8 / 255, seed=0,
                                      progress=lambda m: None, **TINY)
    assert not any(c["flagged"] for c in result.checks), result.checks


def test_unknown_attack_is_rejected_before_any_work(trained_pair, mnist):
    _, (xt, yt) = mnist
    with pytest.raises(ValueError, match="Unknown attack 'fab'"):
        kp.evaluation.robustness(trained_pair[False], xt[:4], yt[:4], 0.1, attacks=("pgd", "fab"))


def test_accuracy_of_a_random_model_is_the_expected_single_pass_accuracy(trained_pair, mnist):
    _, (xt, yt) = mnist
    model = trained_pair[True]
    trained_bias = model.get_layer("pnil").bias.numpy()
    model.get_layer("pnil").bias.assign(np.full((28, 28, 1), 1.0, np.float32))  # σ ≈ 1.6: very noisy
    try:
        per_example = kp.evaluation.per_example_correct(model, xt[:200], yt[:200], draws=8)
        assert set(np.unique(per_example * 8)) <= set(range(9)) and 0 < per_example.mean() < 0.9
        smoothed = kp.evaluation.accuracy(model, xt[:200], yt[:200], draws=8, mode="mean_softmax")
        assert 0 <= smoothed <= 1
        with pytest.raises(ValueError, match="Unknown accuracy mode"):
            kp.evaluation.accuracy(model, xt[:2], yt[:2], mode="vote")
    finally:
        model.get_layer("pnil").bias.assign(trained_bias)


def test_corrected_resampled_ttest_matches_its_formula_and_limits():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 10), rng.normal(0.7, 0.02, 10)
    t, p = corrected_resampled_ttest(a, b, n_train=30000, n_test=30000)
    d = a - b
    expected_t = d.mean() / np.sqrt((1 / 10 + 1.0) * d.var(ddof=1))
    assert t == pytest.approx(expected_t) and p == pytest.approx(2 * scipy_stats.t.sf(abs(expected_t), 9))
    # Without overlap between splits the correction vanishes: the paired t-test.
    t0, p0 = corrected_resampled_ttest(a, b, n_train=10**12, n_test=1)
    ref = scipy_stats.ttest_rel(a, b)
    assert t0 == pytest.approx(ref.statistic, rel=1e-6) and p0 == pytest.approx(ref.pvalue, rel=1e-4)
    assert corrected_resampled_ttest(a, a, 1, 1) == (0.0, 1.0)
    assert corrected_resampled_ttest(a + 0.1, a, 1, 1) == (np.inf, 0.0)
    with pytest.raises(ValueError, match="n_train and n_test must be positive"):
        corrected_resampled_ttest(a, b, 0, 1)
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))


def _records(pnil_min):
    rows = []
    for fold, value in enumerate(pnil_min):
        rows.append(dict(dataset="mnist", method="nfgsm", pnil=True, fold=fold, clean=0.98, spsa=value + 0.1,
                         pgd=value, min=value, n_train=30000, n_test=30000))
        rows.append(dict(dataset="mnist", method="nfgsm", pnil=False, fold=fold, clean=0.98, spsa=0.2 + 0.01 * fold,
                         pgd=0.5, min=0.2 + 0.01 * fold, n_train=30000, n_test=30000))
    return rows


def test_tables_carry_budget_paper_numbers_and_significance(tmp_path):
    paths = report.write_tables(_records([0.60 + 0.001 * i for i in range(10)]), tmp_path, "TEST BUDGET")
    md = paths["md"].read_text()
    assert "TEST BUDGET" in md and "| MNIST | + PNIL | paper | 98±0 | 77±1 | 60±4 | 60±4 |" in md
    assert "| MNIST | + PNIL | ours | 98±0 | 70±0 | 60±0 | **60*±0** |" in md  # significant: starred
    assert "TEST BUDGET" in paths["csv"].read_text() and r"\textbf{60*$\pm$0}" in paths["tex"].read_text()
    data = json.loads(paths["json"].read_text())
    assert data["significance"]["mnist/nfgsm"]["p"] < 0.003
    noisy = report.markdown(_records([0.1, 0.9, 0.15, 0.3, 0.2, 0.25, 0.3, 0.1, 0.12, 0.18]), "b")
    assert "*±" not in noisy.split("ours")[1].split("\n")[0]  # not significant: no star


def test_figures_are_written(trained_pair, tmp_path, mnist):
    _, (xt, _) = mnist
    layer = trained_pair[True].get_layer("pnil")
    maps = report.plot_pnil_maps(layer, xt[0], tmp_path / "maps.png")
    curve = report.plot_curve([1, 10, 100], {"PNIL": [0.9, 0.7, 0.65]}, tmp_path / "eot.png", "EOT samples", "t", log_x=True)
    for path in (maps, curve):
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_command_prints_the_table_and_rejects_bad_runs(trained_pair, tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    trained_pair[True].save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "mnist", "method": "nfgsm", "pnil": True,
                                                 "epsilon": 8 / 255, "epochs": 2, "validation_indices": []}))
    cmd = [sys.executable, "-c", "import sys; from keras_pnil.cli import evaluate_main; sys.exit(evaluate_main())",
           str(run), "--data-dir", str(data_dir), "--budget", "quick", "--num-images", "40", "--spsa-images", "10",
           "--pgd-steps", "5", "--spsa-steps", "2", "--spsa-samples", "16", "--eot-samples", "2", "--out", str(tmp_path / "eval"),
           "--attacks", "pgd,spsa,apgd-dlr,square", "--apgd-steps", "3", "--square-queries", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| MNIST | + PNIL | ours |" in done.stdout and "REDUCED budget" in done.stdout
    assert "NFGSM APGD-DLR | NFGSM SQUARE | NFGSM Min |" in done.stdout
    assert (tmp_path / "eval" / "table1.md").exists() and (tmp_path / "eval" / "run_pnil.png").exists()
    result = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert result["budget"]["pgd_steps"] == 5 and result["budget"]["eot_samples"] == 2
    assert result["effective"] == min(result["attacks"].values()) and set(result["attacks"]) == {
        "pgd", "spsa", "apgd-dlr", "square"}
    bad = subprocess.run(cmd[:3] + [str(tmp_path), "--out", str(tmp_path / "e2")], capture_output=True, text=True)
    assert bad.returncode != 0 and "not a finished training run" in bad.stderr
    unknown = subprocess.run(cmd + ["--attacks", "pgd,cw"], capture_output=True, text=True)
    assert unknown.returncode != 0 and "Unknown attack 'cw'" in unknown.stderr


def test_epsilon_sweep_falls_towards_zero_and_eot_curve_has_one_point_per_setting(trained_pair, mnist):
    _, (xt, yt) = mnist
    sweep = kp.evaluation.epsilon_sweep(trained_pair[False], xt[:60], yt[:60], [0.02, 0.1, 0.3], steps=10, draws=1)
    assert sweep[0] >= sweep[1] >= sweep[2] and sweep[2] < 0.2
    curve = kp.evaluation.eot_curve(trained_pair[True], xt[:60], yt[:60], 0.1, [1, 4], steps=5, draws=2)
    assert len(curve) == 2 and all(0 <= a <= 1 for a in curve)
