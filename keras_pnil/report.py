"""Robustness tables in the form of the paper's Table 1 (Markdown, CSV, LaTeX, JSON) and figures."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.registry import ATTACKS
from keras_pnil.files import atomic_write_bytes, atomic_write_text
from keras_pnil.stats import ALPHA, corrected_resampled_ttest, mean_std

COLUMNS = ("clean", "spsa", "pgd", "min")  # the paper's; other attacks get columns before Min
ATTACK_COLUMNS = ("spsa", "pgd", *(name for name in ATTACKS if name not in ("spsa", "pgd")))
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}

# Table 1 of Schwinn et al. (percent, mean ± std over 5×2 folds): (clean, spsa, pgd, min).
PAPER_TABLE1 = {
    ("cifar10", False, "rfgsm"): ("75±0", "58±3", "52±0", "52*±0"),
    ("cifar10", False, "nfgsm"): ("77±1", "53±3", "50±0", "50*±0"),
    ("cifar10", True, "rfgsm"): ("68±0", "63±1", "57±0", "57*±0"),
    ("cifar10", True, "nfgsm"): ("66±0", "65±2", "57±0", "57*±0"),
    ("fashion_mnist", False, "rfgsm"): ("83±1", "2±1", "58±9", "2*±1"),
    ("fashion_mnist", False, "nfgsm"): ("85±0", "3±2", "64±8", "3*±2"),
    ("fashion_mnist", True, "rfgsm"): ("80±0", "74±1", "70±0", "70*±0"),
    ("fashion_mnist", True, "nfgsm"): ("82±0", "78±1", "67±0", "67*±0"),
    ("mnist", False, "rfgsm"): ("98±0", "46±28", "61±25", "46±28"),
    ("mnist", False, "nfgsm"): ("98±0", "23±36", "54±11", "23±36"),
    ("mnist", True, "rfgsm"): ("98±0", "79±1", "55±9", "55±9"),
    ("mnist", True, "nfgsm"): ("98±0", "77±1", "60±4", "60±4"),
}


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
    return (f"Accuracy in percent, mean ± std over folds. **Min** = effective robustness "
            f"(lowest over attacks); `*` = PNIL vs baseline significant (corrected resampled t-test, "
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


def _figure():
    # A local import: matplotlib is slow to import and needed only for figures; Agg draws without a screen.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_pnil_maps(layer, image, path, title: str = "") -> Path:
    """The paper's Figures 1 and 3: input, learned B and W, Σ for the input, and the noisy output.

    Multi-channel inputs get one row per channel.
    """
    plt = _figure()
    image = np.asarray(image, np.float32)[None]
    maps = {"input X": image[0], "bias B": layer.bias.numpy(), "weight W": layer.kernel.numpy(),
            "Σ = X⊙W + B": layer.log_variance(image).numpy()[0], "output X'": layer(image).numpy()[0]}
    channels = image.shape[-1]
    fig, axes = plt.subplots(channels, len(maps), figsize=(3 * len(maps), 3 * channels), squeeze=False)
    for c in range(channels):
        for ax, (name, value) in zip(axes[c], maps.items(), strict=True):
            shown = ax.imshow(value[..., c], cmap="gray" if "X" in name.split()[-1] else "viridis")
            ax.set_title(name if channels == 1 else f"{name} [ch {c}]")
            ax.axis("off")
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_curve(x, series: dict, path, xlabel: str, title: str, log_x: bool = False) -> Path:
    """Accuracy curves: EOT samples (Figure 4) or ε (Figure 5) on the x axis."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ys in series.items():
        ax.plot(x, np.asarray(ys) * 100, marker="o", label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PGD accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = _save(fig, path)
    plt.close(fig)
    return path


def _device() -> str:
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    cpu = platform.processor() or platform.machine()
    return ", ".join(gpus) if gpus else f"CPU only ({os.cpu_count()} cores, {cpu})"


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def runs_markdown(records, extra: dict | None = None) -> str:
    """One row per run: accuracies, `extra[run name]`'s columns, and the masking checks (⚠ = flagged)."""
    names = [c for c in ATTACK_COLUMNS if any(c in r for r in records)]
    extra = extra or {}
    extra_names = list(dict.fromkeys(k for row in extra.values() for k in row))
    lines = ["| run | clean | " + " | ".join(n.upper() for n in names) + " | Min | worst case | "
             + "".join(f"{n} | " for n in extra_names) + "masking checks |",
             "|---|" + "---|" * (len(names) + len(extra_names) + 4)]
    for r in records:
        run = Path(r["run"]).name
        checks = ", ".join(f"{'⚠ ' if c['flagged'] else ''}{c['check']} {100 * c['value']:+.1f}"
                           for c in r.get("checks", []))
        cells = [_percent(r.get(n)) for n in names] + [str(extra.get(run, {}).get(n, "–")) for n in extra_names]
        lines.append(f"| {run} | {_percent(r['clean'])} | {' | '.join(cells[:len(names)])} | "
                     f"{_percent(r['min'])} | {_percent(r['worst_case'])} | "
                     + "".join(f"{c} | " for c in cells[len(names):]) + f"{checks} |")
    return "\n".join(lines) + "\n"


def read_history(path) -> dict:
    """A run's per-epoch log (`history.csv`) as {column: [values]}; {} if it has none."""
    path = Path(path)
    if not path.exists():
        return {}
    rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if r.get("epoch") != "epoch"]
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in (rows[0] if rows else {})}


def collapse_epoch(values, drop: float = 0.2):
    """The first epoch (1-based) whose value falls more than `drop` below the best before it, else None."""
    for epoch in range(1, len(values)):
        if values[epoch] < max(values[:epoch]) - drop:
            return epoch + 1
    return None


def plot_training_curves(histories: dict, path, title: str) -> Path:
    """Per-epoch clean and PGD accuracy of several runs; PGD without EOT dashed (PNIL runs)."""
    plt = _figure()
    fig, (clean_ax, pgd_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, history_path) in enumerate(histories.items()):
        # tab20: distinct colours for up to 20 runs (the default cycle repeats after 10).
        history, color = read_history(history_path), plt.get_cmap("tab20")(i % 20)
        epochs = range(1, len(history.get("pgd_val_accuracy", [])) + 1)
        clean_ax.plot(epochs, np.asarray(history.get("val_clean_accuracy", [np.nan] * len(epochs))) * 100,
                      marker="o", color=color, label=label)
        pgd_ax.plot(epochs, np.asarray(history.get("pgd_val_accuracy", [])) * 100, marker="o", color=color, label=label)
        if "pgd_no_eot_val_accuracy" in history:
            pgd_ax.plot(epochs, np.asarray(history["pgd_no_eot_val_accuracy"]) * 100, ls="--", color=color,
                        label=f"{label} (no EOT)")
    for ax, name in ((clean_ax, "clean accuracy (%)"), (pgd_ax, "PGD-10 accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    pgd_ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_pnil_history(histories: dict, path, title: str) -> Path | None:
    """Per-epoch noise σ of the PNIL runs among `histories` on object (solid) and background (dashed) pixels:
    whether, and when, the layer learns Figure 1's structure. None if no run logged it."""
    logged = {label: h for label, h in ((label, read_history(p)) for label, p in histories.items())
              if "pnil_sigma_object" in h}
    if not logged:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (label, history) in enumerate(logged.items()):
        color, epochs = plt.get_cmap("tab10")(i % 10), range(1, len(history["pnil_sigma_object"]) + 1)
        ax.plot(epochs, history["pnil_sigma_object"], marker="o", color=color, label=f"{label}: object")
        ax.plot(epochs, history["pnil_sigma_background"], ls="--", marker=".", color=color,
                label=f"{label}: background")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean noise σ")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the curves fill the axes
    ax.set_title(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def structure_markdown(structure: dict) -> str:
    """The learned PNIL's noise σ on object and background pixels against its initial σ."""
    lines = ["| run | σ object | σ background | background / object | initial σ (object / background) "
             "| mean B | mean abs W |",
             "|---|---|---|---|---|---|---|"]
    for name, s in structure.items():
        lines.append(f"| {name} | {s['sigma_object']:.4f} | {s['sigma_background']:.4f} | "
                     f"{s['sigma_background'] / s['sigma_object']:.2f} | {s['init_sigma_object']:.4f} / "
                     f"{s['init_sigma_background']:.4f} | {s['mean_bias']:.3f} | {s['mean_abs_kernel']:.4f} |")
    return "\n".join(lines) + "\n"


def timings_markdown(timings: dict, specs) -> str:
    """Wall time per data set and stage of these runs (summed over the sessions that ran each).

    A runs folder shared by several `--datasets` invocations holds every data set's timings: only the
    reported runs' count, so one data set's summary does not carry another's hours. Figures are timed
    as one stage.
    """
    dataset_of = {s.name: s.dataset for s in specs}
    stages = defaultdict(float)
    for key, seconds in timings.items():
        stage, _, run = key.partition("/")
        if run in dataset_of:
            stages[f"{dataset_of[run]} {stage}"] += seconds
        elif not run:
            stages[stage] += seconds
    total = sum(stages.values())
    return ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in stages.items()) + \
        f"; total {total / 60:.1f} min"


def training_columns(specs, histories: dict, timings: dict) -> dict:
    """Per run: epochs trained (and the lowest adversarial validation loss's, the checkpoint a `best` run keeps),
    training seconds, cost relative to the same data set's clean run, collapse epochs.

    `histories` maps each run's name to its per-epoch log (`history.csv`).
    """
    columns = {}
    clean = {s.dataset: timings.get(f"train/{s.name}") for s in specs if s.method == "clean"}
    for spec in specs:
        seconds = timings.get(f"train/{spec.name}")  # recorded only by the session that trained the run
        history = read_history(histories[spec.name])
        losses = history.get("val_loss", [])
        row = {"epochs": f"{len(losses)} (best {int(np.argmin(losses)) + 1})" if losses else "–",
               "train s": f"{seconds:.0f}" if seconds else "–",
               "× clean": f"{seconds / clean[spec.dataset]:.2f}" if seconds and clean.get(spec.dataset) else "–",
               "collapse (epoch)": collapse_epoch(history.get("pgd_val_accuracy", [])) or "none"}
        if "pgd_no_eot_val_accuracy" in history:
            row["collapse without EOT"] = collapse_epoch(history["pgd_no_eot_val_accuracy"]) or "none"
        columns[spec.name] = row
    return columns


def suite_summary(suite: dict, budget: str, records, figures: dict, timings: dict, tables: dict, specs,
                  histories: dict, planned: int | None = None) -> str:
    """The Markdown summary a reproduce run writes next to its tables and figures (`planned`: the grid's size,
    when only some of its runs are reported)."""
    datasets = ",".join(dict.fromkeys(s.dataset for s in specs))
    settings = suite["budgets"][budget]
    parts = [
        f"# {suite['title']}: `{budget}` budget\n",
        f"Generated by `keras-pnil-reproduce --suite {Path(suite['path']).stem} --budget {budget} "
        f"--datasets {datasets}` on {datetime.date.today().isoformat()}; device: {_device()}. "
        f"Wall time: {timings_markdown(timings, specs)}.\n",
        f"Budget: {settings['about']}\n",
    ]
    if planned is not None and planned > len(specs):
        parts.append(f"**PARTIAL**: the {len(specs)} of the grid's {planned} runs trained and evaluated so far "
                     f"(`--report-only`); the suite resumes with the rest.\n")
    if suite.get("report", "table1") == "table1":
        parts += ["## Table 1\n", Path(tables["md"]).read_text()]
    parts += [
        "\n## Every run, with the gradient-masking checks\n",
        "Accuracies in percent. Checks per run, in points: a gradient-free attack's accuracy minus the strongest "
        "gradient attack's on the same images (flagged below -5), PGD accuracy at ε = 0.5 (flagged above 10), "
        "and the change from doubling PGD's steps and EOT samples (flagged below -3); ⚠ = flagged. "
        "Collapse: the first epoch whose per-epoch PGD-10 accuracy on the fixed validation batch fell more than "
        "20 points below its best so far.\n",
        runs_markdown(records, training_columns(specs, histories, timings)),
        "\n## Does the PNIL learn structure?\n",
        f"Noise σ on object pixels (> 0.5) and background pixels (< 0.05) of {figures['settings']['images']} "
        "held-out images, first fold.\n", structure_markdown(figures["structure"]),
        "\n## Figures\n", "\n".join(f"![{p.stem}]({p.name})" for p in figures["paths"]), "",
    ]
    return "\n".join(parts)
