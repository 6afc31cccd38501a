"""The Markdown summary of a reproduced suite: every run with its masking checks, training columns,
the PNIL's learned structure, wall time and device."""

from __future__ import annotations

import datetime
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_pnil.history import collapse_epoch, read_history
from keras_pnil.report import ATTACK_COLUMNS
from keras_pnil.seeds import COLLAPSE_CURVE, COLLAPSE_FRACTION, collapsed, over_seeds, over_seeds_markdown


def _device() -> str:
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    cpu = platform.processor() or platform.machine()
    return ", ".join(gpus) if gpus else f"CPU only ({os.cpu_count()} cores, {cpu})"


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def runs_markdown(records, extra: dict | None = None) -> str:
    """One row per run: accuracies, `extra[run name]`'s columns, and the masking checks (⚠ = flagged).

    Example:
        >>> print(runs_markdown([{"run": "runs/m", "clean": 0.98, "pgd": 0.6, "min": 0.6, "worst_case": 0.58}]))
        | run | clean | PGD | Min | worst case | masking checks |
        |---|---|---|---|---|---|
        | m | 98.0 | 60.0 | 60.0 | 58.0 |  |
    """
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


def structure_markdown(structure: dict) -> str:
    """The learned PNIL's noise σ on object and background pixels against its initial σ.

    Example:
        >>> print(structure_markdown({"mnist-nfgsm-pnil-fold0": pnil_structure(layer, x_test[:256])}))
    """
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

    Example:
        >>> timings_markdown({"train/mnist-nfgsm-pnil-fold0": 600.0, "figures": 30.0}, specs)
        'mnist train 10.0 min, figures 0.5 min; total 10.5 min'
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

    Example:
        >>> training_columns([spec], {spec.name: "runs/a/history.csv"}, {f"train/{spec.name}": 42.0})[spec.name]
        {'epochs': '5 (best 2)', 'train s': '42', '× clean': '–', 'collapse (epoch)': 'none'}
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
               "collapse (epoch)": collapse_epoch(history.get("pgd_val_accuracy", [])) or "none",
               "collapsed": {True: "yes", False: "no", None: "–"}[collapsed(history.get(COLLAPSE_CURVE, []))]}
        if "pgd_no_eot_val_accuracy" in history:
            row["collapse without EOT"] = collapse_epoch(history["pgd_no_eot_val_accuracy"]) or "none"
        columns[spec.name] = row
    return columns


def published_markdown(published: dict, records) -> str:
    """Each published row of a suite (its "published": {method: [rows]}) beside our runs of that method.

    A row names its `source`, `settings` (network and training), `attack`, `clean` and `robust` (numbers
    or text, percent) and the `column` of ours that measures the same thing ("pgd", "autoattack", ...);
    with `pnil` (true or false) it stands beside our runs with (or without) the PNIL only.

    Example:
        >>> row = {"source": "Wong et al. 2020", "settings": "PreActResNet-18", "attack": "PGD-50x10",
        ...        "clean": 86.06, "robust": 46.06, "column": "pgd"}
        >>> print(published_markdown({"fgsm-rs": [row]}, [{"run": "runs/c", "method": "fgsm-rs", "pnil": False,
        ...                                                 "clean": 0.85, "pgd": 0.44}]).splitlines()[2])
        | fgsm-rs | Wong et al. 2020 | PreActResNet-18 | PGD-50x10 | 86.06 | 46.06 | c | 85.0 | 44.0 (PGD) |
    """
    lines = ["| method | published: source | settings | attack | clean | robust | ours: run | clean | robust |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, rows in published.items():
        for row in rows:
            ours = [r for r in records if r["method"] == method and row.get("pnil", r["pnil"]) == r["pnil"]]
            for r in ours or [None]:
                run, clean, robust = ("not run", "–", "–") if r is None else (
                    Path(r["run"]).name, _percent(r["clean"]), f"{_percent(r.get(row['column']))} "
                                                               f"({row['column'].upper()})")
                lines.append(f"| {method} | {row['source']} | {row['settings']} | {row['attack']} | "
                             f"{row['clean']} | {row['robust']} | {run} | {clean} | {robust} |")
    return "\n".join(lines) + "\n"


def suite_summary(suite: dict, budget: str, records, figures: dict, timings: dict, tables: dict, specs,
                  histories: dict, planned: int | None = None) -> str:
    """The Markdown summary a reproduce run writes next to its tables and figures (`planned`: the grid's size,
    when only some of its runs are reported).

    Example:
        >>> text = suite_summary(suite, "quick", records, figures, timings, tables, specs, histories)
        >>> text.splitlines()[0]
        '# Table 1 of Schwinn et al.: ...: `quick` budget'
    """
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
    if suite.get("published"):
        parts += ["## Published rows beside ours\n", "Percent. Ours: on this budget's images and attacks (above); "
                  "a published row's own attack and images are in its row.\n",
                  published_markdown(suite["published"], records)]
    if any(s.seed is not None for s in specs):
        parts += [
            "## Over seeds\n",
            f"Per data set, method and PNIL, over the training seeds reported. A run **collapsed** when its final "
            f"epoch's PGD accuracy on the fixed validation batch (with EOT for PNIL models) is below "
            f"{COLLAPSE_FRACTION:.0%} of its best epoch's. Accuracies in percent, mean ± sample std over all seeds "
            "and over the runs that did not collapse (n where fewer).\n",
            over_seeds_markdown(over_seeds(specs, records, {s.name: read_history(histories[s.name]) for s in specs})),
        ]
    parts += [
        "\n## Every run, with the gradient-masking checks\n",
        "Accuracies in percent. Checks per run, in points: a gradient-free attack's accuracy minus the strongest "
        "gradient attack's on the same images (flagged below -5), or the points AutoAttack's Square stage took "
        "after its gradient stages (flagged above 0.2, AutoAttack's own check), PGD accuracy at ε = 0.5 (flagged "
        "above 10), and the change from doubling PGD's steps and EOT samples (flagged below -3); ⚠ = flagged. "
        "Collapse: the first epoch whose per-epoch PGD-10 accuracy on the fixed validation batch fell more than "
        "20 points below its best so far.\n",
        runs_markdown(records, training_columns(specs, histories, timings)),
        "\n## Does the PNIL learn structure?\n",
        f"Noise σ on object pixels (> 0.5) and background pixels (< 0.05) of {figures['settings']['images']} "
        "held-out images, first fold.\n", structure_markdown(figures["structure"]),
        "\n## Figures\n", "\n".join(f"![{p.stem}]({p.name})" for p in figures["paths"]), "",
    ]
    return "\n".join(parts)
