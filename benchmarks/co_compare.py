"""The catastrophic-overfitting study's runs as distributions over seeds: against Wong et al.'s PyTorch loop, and
method against method.

Reads runs from the suites' summaries (their *Every run* tables: the `collapsed` column and an accuracy column)
and, with `--reference`, the reference's runs from `benchmarks/co_reference.py`'s JSON files. Seeds do not carry
over between frameworks, so runs are compared as samples, not seed by seed:

- `--reference`: per data set, our plain FGSM-RS against the reference, on the collapse counts (Fisher's exact
  test) and on PGD-50 × 10 accuracy (the exact Mann-Whitney U test), with `keras_pnil.seeds.compare_distributions`;
- `--against RUN_KIND` (e.g. `fgsm-rs-pnil`): per data set, every other method of the summaries against that one
  on `--column` (default AUTOATTACK), with the exact Mann-Whitney U test.

    python benchmarks/co_compare.py --summary docs/results/co_study/full/summary.md \\
        --reference docs/results/co_study/reference-mnist.json docs/results/co_study/reference-fashion_mnist.json
    python benchmarks/co_compare.py --summary docs/results/co_study/full/summary.md \\
        docs/results/co_study/regularisers/summary.md --against fgsm-rs-pnil
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from keras_pnil.seeds import compare_distributions
from keras_pnil.stats import mann_whitney_p

METHOD = "fgsm-rs"
RUN = re.compile(r"^(?P<dataset>.+?)-(?P<method>.+)-seed(?P<seed>\d+)-(?P<variant>baseline|pnil)$")


def summary_table(path: Path) -> list[dict]:
    """The rows of a suite summary's *Every run* table, each a dict of its columns."""
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("## Every run"))
        header_at = next(i for i in range(start, len(lines)) if lines[i].startswith("| run |"))
    except StopIteration:
        raise SystemExit(f"error: {path} has no 'Every run' table: pass the summary the suite's report wrote") from None
    header = [c.strip() for c in lines[header_at].strip("|").split("|")]
    rows = []
    for line in lines[header_at + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def runs_of(rows: list[dict], dataset: str, kind: str, column: str = "PGD") -> list[tuple[int, bool, float]]:
    """(seed, collapsed, `column` as a fraction) of the runs of `kind` (a method, `-pnil` appended for its PNIL
    variant) on `dataset` that were judged and evaluated, by seed."""
    runs = []
    for row in rows:
        match = RUN.match(row["run"])
        if not match or match["dataset"] != dataset or row.get("collapsed") not in ("yes", "no"):
            continue
        if match["method"] + ("-pnil" if match["variant"] == "pnil" else "") != kind:
            continue
        if column not in row:
            raise SystemExit(f"error: the summary has no column {column!r}: pick one of {', '.join(row)}")
        runs.append((int(match["seed"]), row["collapsed"] == "yes", float(row[column]) / 100))
    return sorted(runs)


def summary_runs(path: Path, dataset: str) -> list[tuple[int, bool, float]]:
    """(seed, collapsed, PGD accuracy) of our plain FGSM-RS runs on `dataset`, from the summary's run table."""
    return runs_of(summary_table(path), dataset, METHOD)


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


def against_reference(summary: Path, references: list[Path]) -> int:
    print("| data set | ours: collapsed (PGD-50 × 10 per seed) | reference: collapsed (per seed) | "
          "collapse counts, Fisher p | all runs, Mann-Whitney p | runs that held, Mann-Whitney p | told apart at 5 % |")
    print("|---|---|---|---|---|---|---|")
    for path in references:
        dataset, theirs = reference_runs(path)
        ours = summary_runs(summary, dataset)
        if not ours:
            print(f"error: {summary} has no evaluated {dataset} {METHOD} run", file=sys.stderr)
            return 2
        c = compare_distributions([(f, a) for _, f, a in ours], [(f, a) for _, f, a in theirs])
        print(f"| {dataset} | {_cell(ours)} | {_cell(theirs)} | {_p(c.collapse_p)} | {_p(c.accuracy_p)} | "
              f"{_p(c.stable_p)} | {'no' if c.matches() else 'yes'} |")
    return 0


def against_method(summaries: list[Path], anchor: str, column: str) -> int:
    rows = [row for path in summaries for row in summary_table(path)]
    kinds, datasets = [], []
    for row in rows:
        match = RUN.match(row["run"])
        if match:
            kind = match["method"] + ("-pnil" if match["variant"] == "pnil" else "")
            kinds += [kind] if kind not in kinds else []
            datasets += [match["dataset"]] if match["dataset"] not in datasets else []
    if anchor not in kinds:
        print(f"error: no run of {anchor!r} in the summaries: pick one of {', '.join(kinds)}", file=sys.stderr)
        return 2
    print(f"| data set | method | collapsed ({column} per seed) | against {anchor}: Mann-Whitney p |")
    print("|---|---|---|---|")
    for dataset in datasets:
        base = runs_of(rows, dataset, anchor, column)
        for kind in kinds:
            runs = runs_of(rows, dataset, kind, column)
            if not runs:
                continue
            p = "" if kind == anchor else _p(mann_whitney_p([a for *_, a in runs], [a for *_, a in base]))
            print(f"| {dataset} | {kind} | {_cell(runs)} | {p} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", type=Path, nargs="+", required=True, help="the suites' summary.md files")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--reference", type=Path, nargs="+", help="co_reference.py's JSON files")
    mode.add_argument("--against", help="a run kind to compare every other with, e.g. fgsm-rs-pnil")
    parser.add_argument("--column", default="AUTOATTACK", help="the accuracy column --against compares")
    args = parser.parse_args(argv)
    if args.reference:
        if len(args.summary) != 1:
            parser.error("--reference compares one summary (the co_study suite's) with the reference")
        code = against_reference(args.summary[0], args.reference)
    else:
        code = against_method(args.summary, args.against, args.column)
    if code == 0:
        print("\n(* = collapsed by keras_pnil.seeds.collapsed; accuracies in percent; exact two-sided tests)")
    return code


if __name__ == "__main__":
    sys.exit(main())
