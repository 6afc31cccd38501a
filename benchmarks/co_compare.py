"""The catastrophic-overfitting study's FGSM-RS against Wong et al.'s PyTorch loop, as distributions over seeds.

Reads our runs from the suite's summary (its *Every run* table: the `collapsed` column and the PGD-50 × 10
accuracy on the 2,000 evaluation images) and the reference's from `benchmarks/co_reference.py`'s JSON files,
and prints, per data set, the collapse counts with Fisher's exact test and the robust accuracies with the
exact Mann-Whitney U test (`keras_pnil.seeds.compare_distributions`). Seeds do not carry over between the
frameworks, so the runs are compared as two samples, not seed by seed.

    python benchmarks/co_compare.py --summary docs/results/co_study/full/summary.md \\
        --reference docs/results/co_study/reference-mnist.json docs/results/co_study/reference-fashion_mnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keras_pnil.seeds import compare_distributions

METHOD = "fgsm-rs"


def summary_runs(path: Path, dataset: str) -> list[tuple[int, bool, float]]:
    """(seed, collapsed, PGD accuracy) of our plain FGSM-RS runs on `dataset`, from the summary's run table."""
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("## Every run"))
        header_at = next(i for i in range(start, len(lines)) if lines[i].startswith("| run |"))
    except StopIteration:
        raise SystemExit(f"error: {path} has no 'Every run' table: pass the summary the suite's report wrote") from None
    header = [c.strip() for c in lines[header_at].strip("|").split("|")]
    runs = []
    for line in lines[header_at + 2:]:
        if not line.startswith("|"):
            break
        row = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        prefix = f"{dataset}-{METHOD}-seed"
        if row["run"].startswith(prefix) and row["run"].endswith("-baseline") and row["collapsed"] in ("yes", "no"):
            seed = int(row["run"][len(prefix):].split("-")[0])
            runs.append((seed, row["collapsed"] == "yes", float(row["PGD"]) / 100))
    return sorted(runs)


def reference_runs(path: Path) -> tuple[str, list[tuple[int, bool, float]]]:
    """The data set and (seed, collapsed, PGD-50 × 10 accuracy) of each reference run in `path`."""
    reference = json.loads(path.read_text())
    return reference["dataset"], sorted((r["seed"], bool(r["collapsed"]), float(r["pgd"]))
                                        for r in reference["runs"].values())


def _cell(runs) -> str:
    values = ", ".join(f"{100 * a:.1f}{'*' if c else ''}" for _, c, a in runs)
    return f"{sum(c for _, c, _ in runs)} of {len(runs)} ({values})"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, required=True, help="the co_study suite's summary.md")
    parser.add_argument("--reference", type=Path, nargs="+", required=True, help="co_reference.py's JSON files")
    args = parser.parse_args(argv)
    print("| data set | ours: collapsed (PGD-50 × 10 per seed) | reference: collapsed (per seed) | "
          "collapse counts, Fisher p | all runs, Mann-Whitney p | runs that held, Mann-Whitney p | told apart at 5 % |")
    print("|---|---|---|---|---|---|---|")
    for path in args.reference:
        dataset, theirs = reference_runs(path)
        ours = summary_runs(args.summary, dataset)
        if not ours:
            print(f"error: {args.summary} has no evaluated {dataset} {METHOD} run", file=sys.stderr)
            return 2
        c = compare_distributions([(f, a) for _, f, a in ours], [(f, a) for _, f, a in theirs])
        print(f"| {dataset} | {_cell(ours)} | {_cell(theirs)} | {_p(c.collapse_p)} | {_p(c.accuracy_p)} | "
              f"{_p(c.stable_p)} | {'no' if c.matches() else 'yes'} |")
    print("\n(* = collapsed by keras_pnil.seeds.collapsed; accuracies in percent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
