"""benchmarks/co_compare.py: the study's FGSM-RS runs read from the summary and compared with the reference."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import co_compare  # noqa: E402

SUMMARY = """# title

## Every run, with the gradient-masking checks

Accuracies in percent.

| run | clean | PGD | AUTOATTACK | collapsed | masking checks |
|---|---|---|---|---|---|
| mnist-fgsm-rs-seed1-baseline | 98.0 | 85.5 | 80.0 | no | – |
| mnist-fgsm-rs-seed0-baseline | 98.9 | 86.6 | 76.4 | no | – |
| mnist-fgsm-rs-seed0-pnil | 98.9 | 79.8 | 67.8 | no | – |
| mnist-n-fgsm-seed0-baseline | 68.0 | 0.0 | 0.0 | yes | – |
| mnist-fgsm-rs-seed2-baseline | 98.0 | 0.0 | 0.0 | yes | – |
| fashion_mnist-fgsm-rs-seed0-baseline | 75.0 | 14.2 | 3.0 | no | – |

## Does the PNIL learn structure?
| mnist-fgsm-rs-seed9-baseline | 1 | 2 | 3 | no | – |
"""


def _reference(tmp_path, dataset, runs):
    path = tmp_path / f"reference-{dataset}.json"
    path.write_text(json.dumps({"dataset": dataset, "runs": {
        str(s): {"seed": s, "collapsed": c, "pgd": a} for s, c, a in runs}}))
    return path


def test_summary_runs_reads_only_the_plain_fgsm_rs_runs_of_the_data_set_from_the_run_table(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text(SUMMARY)
    assert co_compare.summary_runs(summary, "mnist") == [(0, False, 0.866), (1, False, 0.855), (2, True, 0.0)]
    assert co_compare.summary_runs(summary, "fashion_mnist") == [(0, False, 0.142)]
    summary.write_text("# no table\n")
    with pytest.raises(SystemExit, match="no 'Every run' table"):
        co_compare.summary_runs(summary, "mnist")


def test_main_prints_each_data_sets_comparison_and_says_whether_the_tests_tell_them_apart(tmp_path, capsys):
    summary = tmp_path / "summary.md"
    summary.write_text(SUMMARY)
    mnist = _reference(tmp_path, "mnist", [(0, False, 0.89), (1, False, 0.75), (2, False, 0.82)])
    assert co_compare.main(["--summary", str(summary), "--reference", str(mnist)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| mnist"))
    assert "| 1 of 3 (86.6, 85.5, 0.0*) | 0 of 3 (89.0, 75.0, 82.0) | 1.000 |" in row and row.endswith("| no |")
    missing = _reference(tmp_path, "cifar10", [(0, False, 0.5)])
    assert co_compare.main(["--summary", str(summary), "--reference", str(missing)]) == 2
    assert "no evaluated cifar10 fgsm-rs run" in capsys.readouterr().err


def test_against_compares_every_other_method_with_one_on_a_column_by_exact_mann_whitney(tmp_path, capsys):
    summary = tmp_path / "summary.md"
    summary.write_text(SUMMARY.replace("| mnist-fgsm-rs-seed0-pnil | 98.9 | 79.8 | 67.8 | no | – |",
                                       "| mnist-fgsm-rs-seed0-pnil | 98.9 | 79.8 | 67.8 | no | – |\n"
                                       "| mnist-fgsm-rs-seed1-pnil | 98.9 | 81.0 | 90.0 | no | – |\n"
                                       "| mnist-fgsm-rs-seed2-pnil | 98.9 | 82.0 | 91.0 | no | – |"))
    assert co_compare.main(["--summary", str(summary), "--against", "fgsm-rs-pnil"]) == 0
    out = capsys.readouterr().out
    # AutoAttack of FGSM-RS (76.4, 80.0, 0.0) against its PNIL runs (67.8, 90.0, 91.0): U = 2 (76.4 and 80.0 beat
    # 67.8); 4 of the C(6, 3) = 20 orders give U <= 2, so the two-sided p is 2 * 4 / 20.
    assert "| mnist | fgsm-rs | 1 of 3 (76.4, 80.0, 0.0*) | 0.400 |" in out
    assert "| mnist | fgsm-rs-pnil | 0 of 3 (67.8, 90.0, 91.0) |  |" in out
    # N-FGSM's one run (0.0) below all three: 1 of C(4, 1) = 4 orders on each side, p = 2 / 4.
    assert "| mnist | n-fgsm | 1 of 1 (0.0*) | 0.500 |" in out
    assert "fashion_mnist | fgsm-rs | 0 of 1 (3.0) | – |" in out  # no PNIL run there to compare with
    assert co_compare.main(["--summary", str(summary), "--against", "pgd-10"]) == 2
    assert "no run of 'pgd-10'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no column 'Min'"):
        co_compare.main(["--summary", str(summary), "--against", "fgsm-rs-pnil", "--column", "Min"])
