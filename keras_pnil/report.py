"""Robustness tables in the form of the paper's Table 1 (Markdown, CSV, LaTeX, JSON)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from keras_pnil.attacks.registry import ATTACKS
from keras_pnil.files import atomic_write_text
from keras_pnil.paper import COLUMNS, DATASET_TITLES, PAPER_TABLE1
from keras_pnil.stats import ALPHA, corrected_resampled_ttest, mean_std

ATTACK_COLUMNS = ("spsa", "pgd", *(name for name in ATTACKS if name not in ("spsa", "pgd")))


def _cell(values) -> str:
    mean, std = mean_std(np.asarray(values) * 100)
    return f"{mean:.0f}±{std:.0f}"


def columns(records) -> tuple:
    """clean, the attacks present (the paper's SPSA and PGD always), Min."""
    present = [a for a in ATTACK_COLUMNS if a in ("spsa", "pgd") or any(a in r for r in records)]
    return ("clean", *present, "min")


def _group(records):
    """{(dataset, pnil, method): {column: [per-fold values]}} in fold order."""
    groups, shown = defaultdict(lambda: defaultdict(list)), columns(records)
    for r in sorted(records, key=lambda r: (r.get("repetition", 0), r.get("fold", 0))):
        for column in shown:
            if r.get(column) is not None:
                groups[(r["dataset"], bool(r["pnil"]), r["method"])][column].append(r[column])
    return groups


def significance(records) -> dict:
    """{(dataset, method): (t, p)} for PNIL vs baseline effective robustness (Min), paired by fold."""
    groups, tests = _group(records), {}
    sizes = {(r["dataset"], r["method"]): (r.get("n_train", 1), r.get("n_test", 1)) for r in records}
    for (dataset, pnil, method), cols in groups.items():
        other = groups.get((dataset, False, method))
        if pnil and other and len(cols["min"]) == len(other["min"]) >= 2:
            tests[(dataset, method)] = corrected_resampled_ttest(cols["min"], other["min"], *sizes[(dataset, method)])
    return tests


def table_rows(records) -> tuple[list[str], list[list[str]]]:
    """Header and rows: ours (mean ± std %) with the paper's row below each; Min marked, * = significant."""
    groups, tests = _group(records), significance(records)
    paper_order = ("rfgsm", "nfgsm")
    # The paper's methods first, then the others by name: the same table on every run.
    methods = sorted({m for _, _, m in groups}, key=lambda m: (paper_order.index(m) if m in paper_order else 9, m))
    shown = columns(records)
    header = ["data set", "model", "source"] + [f"{m.upper()} {c.capitalize() if c in ('clean', 'min') else c.upper()}"
                                                for m in methods for c in shown]
    rows = []
    for dataset, pnil in sorted({(d, p) for d, p, _ in groups}):
        ours, paper = [], []
        for method in methods:
            cols = groups.get((dataset, pnil, method), {})
            significant = tests.get((dataset, method), (0, 1))[1] < ALPHA
            published = dict(zip(COLUMNS, PAPER_TABLE1.get((dataset, pnil, method), ("–",) * 4), strict=True))
            for column in shown:
                text = _cell(cols[column]) if cols.get(column) else "–"
                if column == "min" and cols.get(column):
                    text = f"**{text.replace('±', '*±' if significant else '±')}**"
                ours.append(text)
                paper.append(published.get(column, "–"))
        model = "+ PNIL" if pnil else "baseline"
        title = DATASET_TITLES.get(dataset, dataset)
        rows.append([title, model, "ours"] + ours)
        rows.append([title, model, "paper"] + list(paper))
    return header, rows


def markdown(records, budget: str) -> str:
    header, rows = table_rows(records)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return (f"Accuracy in percent, mean ± std over folds; an image counts as robust to an attack only if it is "
            f"classified right both as it is and attacked. **Min** = effective robustness: the lowest attack "
            f"accuracy on the images every attack saw (a subset when some attacks run on fewer images, so it may "
            f"differ from an attack's column); `*` = PNIL vs baseline significant (corrected resampled t-test, "
            f"α = {ALPHA}).\n\nBudget: {budget}\n\n" + "\n".join(lines) + "\n")


def to_csv(records, budget: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["# budget: " + budget])
    header, rows = table_rows(records)
    writer.writerow(header)
    writer.writerows([[c.replace("**", "") for c in r] for r in rows])
    return out.getvalue()


def latex(records, budget: str) -> str:
    header, rows = table_rows(records)
    def tex(cell: str) -> str:
        cell = cell.replace("±", r"$\pm$")
        return rf"\textbf{{{cell[2:-2]}}}" if cell.startswith("**") else cell

    body = [" & ".join(tex(c) for c in r) + r" \\" for r in rows]
    spec = "lll" + "r" * (len(header) - 3)
    return "\n".join([f"% Budget: {budget}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                      " & ".join(header) + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}", ""])


def table_budget(records) -> str:
    """The budget line of a table: a PNIL run's (it states the EOT samples) if there is one, per data set
    where their budgets differ (each has its own ε)."""
    def line(rows):
        return next((r["budget"] for r in rows if r["pnil"]), rows[0]["budget"])

    datasets = dict.fromkeys(r["dataset"] for r in records)
    per_dataset = {d: line([r for r in records if r["dataset"] == d]) for d in datasets}
    if len(set(per_dataset.values())) == 1:
        return next(iter(per_dataset.values()))
    return "; ".join(f"{DATASET_TITLES.get(d, d)}: {budget}" for d, budget in per_dataset.items())


def write_tables(records, out_dir, budget: str | None = None, name: str = "table1") -> dict:
    """Writes Markdown, CSV, LaTeX and JSON tables atomically; returns {format: path}."""
    budget = budget or table_budget(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tests = {f"{d}/{m}": {"t": t, "p": p} for (d, m), (t, p) in significance(records).items()}
    contents = {
        "md": markdown(records, budget), "csv": to_csv(records, budget), "tex": latex(records, budget),
        "json": json.dumps({"budget": budget, "records": records, "significance": tests}, indent=2),
    }
    paths = {}
    for ext, text in contents.items():
        paths[ext] = out_dir / f"{name}.{ext}"
        atomic_write_text(paths[ext], text)
    return paths
