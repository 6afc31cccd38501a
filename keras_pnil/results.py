"""The evaluate command's results: a tidy `results.csv`/`results.json`, a one-row-per-model table and
`robustbench.json` (RobustBench's model-info form).

Every number and label here is read from an evaluation's stored result (its
`RobustnessResult.to_dict()`, which holds the resolved plan), never re-derived.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from keras_pnil.files import atomic_write_json, atomic_write_text
from keras_pnil.records import VERSION

# One row per model, data set and attack (plus clean and Min). Columns added later go at the end.
RESULT_COLUMNS = ("model", "dataset", "epsilon", "attack", "accuracy", "clean_accuracy", "n_images", "eot_samples",
                  "accuracy_draws", "budget", "label", "norm", "bounds", "largest_perturbation")
# RobustBench's names of the threat models.
ROBUSTBENCH_THREATS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def result_rows(model: str, dataset: str, result: dict) -> list[dict]:
    """The tidy rows of one evaluation (`RobustnessResult.to_dict()`): clean, each attack, and Min.

    Each attack row states the clean accuracy on its own images; Min's row is
    on the images every attack saw, with their count.

    Example:
        >>> [row["attack"] for row in result_rows("m", "mnist", result.to_dict())]
        ['clean', 'pgd', 'spsa', 'min']
    """
    plan = result["plan"]
    lo, hi = plan.get("bounds", (0.0, 1.0))
    base = {"model": model, "dataset": dataset, "epsilon": plan["epsilon"], "accuracy_draws": plan["accuracy_draws"],
            "label": plan["label"], "norm": plan.get("norm", "linf"), "bounds": f"{lo:g},{hi:g}",
            "largest_perturbation": ""}
    largest = result.get("largest_perturbation", {})
    rows = [{**base, "attack": "clean", "accuracy": result["clean"], "clean_accuracy": result["clean"],
             "n_images": plan["num_images"], "eot_samples": "", "budget": "no attack"}]
    for name, attack in result["attacks"].items():
        rows.append({**base, "attack": name, "accuracy": attack["accuracy"], "clean_accuracy": attack["clean"],
                     "n_images": attack["n_images"], "eot_samples": attack["eot_samples"], "budget": attack["budget"],
                     "largest_perturbation": largest.get(name, "")})
    names = ", ".join(result["attacks"]) or "no attack"
    rows.append({**base, "attack": "min", "accuracy": result["effective"], "clean_accuracy": result["effective_clean"],
                 "n_images": len(plan["common_images"]), "eot_samples": "",
                 "budget": f"lowest accuracy over {names} on the images all of them attacked"})
    return rows


def write_results(records, out_dir) -> dict:
    """Writes `results.csv` (the tidy rows of every record) and `results.json` (the rows, the masking checks
    and the per-image worst case of every record) atomically; returns {format: path}."""
    out_dir = Path(out_dir)
    rows = [row for record in records for row in result_rows(record["run"], record["dataset"], record["result"])]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    details = [{"model": r["run"], "dataset": r["dataset"], "checks": r["checks"], "worst_case": r["worst_case"],
                "worst_case_per_image": r["result"]["worst_case_per_image"], "plan": r["result"]["plan"],
                "threat_model": r["result"].get("threat_model"), "random": r["result"]["plan"]["random"],
                "largest_perturbation": r["result"].get("largest_perturbation", {})}
               for r in records]
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json"}
    atomic_write_text(paths["csv"], text.getvalue())
    atomic_write_json(paths["json"], {"columns": list(RESULT_COLUMNS), "rows": rows, "models": details})
    return paths


def _percent(value) -> str:
    return f"{100 * value:.1f}"


def model_table(records) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of the one-row-per-model table: Clean, each attack, Min.

    Attack cells read `accuracy (clean on the same images)`; the header names
    each column's images and EOT draws when every model shares them, and the
    notes give each model's budget line.
    """
    attacks = list(dict.fromkeys(a for r in records for a in r["result"]["attacks"]))

    def heading(name: str) -> str:
        found = [r["result"]["attacks"][name] for r in records if name in r["result"]["attacks"]]
        shapes = {(a["n_images"], a["eot_samples"]) for a in found}
        if len(shapes) != 1:
            return name.upper()
        n, eot = shapes.pop()
        return f"{name.upper()} ({n} img, EOT {eot})"

    clean_n = {r["result"]["plan"]["num_images"] for r in records}
    min_n = {len(r["result"]["plan"]["common_images"]) for r in records}
    header = ["model", "data", f"Clean ({clean_n.pop()} img)" if len(clean_n) == 1 else "Clean",
              *map(heading, attacks), f"Min ({min_n.pop()} img)" if len(min_n) == 1 else "Min", "masking checks"]
    rows, notes = [], []
    for r in records:
        result = r["result"]
        cells = [r["method"], r["dataset"], _percent(result["clean"])]
        for name in attacks:
            attack = result["attacks"].get(name)
            cells.append("–" if attack is None else f"{_percent(attack['accuracy'])} ({_percent(attack['clean'])})")
        cells.append(f"**{_percent(result['effective'])}** ({_percent(result['effective_clean'])})")
        flagged = [c["check"] for c in r["checks"] if c["flagged"]]
        cells.append(("⚠ " + ", ".join(flagged)) if flagged else ("none flagged" if r["checks"] else "not run"))
        rows.append(cells)
        notes.append(f"{r['method']}: {result['budget']}")
    return header, rows, notes


def write_model_table(records, out_dir, name: str = "robustness") -> dict:
    """The one-row-per-model table as Markdown, CSV, LaTeX and JSON, written atomically; returns {format: path}."""
    header, rows, notes = model_table(records)
    intro = ("Accuracy in percent; an attack's cell is its accuracy (the clean accuracy on the same images), "
             "an image counting as robust only if it is classified right both as it is and attacked. "
             "**Min** = effective robustness: the lowest attack accuracy on the images every attack saw.")
    md = [intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(row) + " |" for row in rows), "", *(f"- Budget of {n}" for n in notes), ""]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([f"# budget of {note}"] for note in notes)
    writer.writerow(header)
    writer.writerows([[c.replace("**", "") for c in row] for row in rows])
    tex = [f"% {note}" for note in notes] + [rf"\begin{{tabular}}{{ll{'r' * (len(header) - 2)}}}", r"\toprule",
                                             " & ".join(header) + r" \\", r"\midrule",
                                             *(" & ".join(c.replace("**", "") for c in row) + r" \\" for row in rows),
                                             r"\bottomrule", r"\end{tabular}", ""]
    contents = {"md": "\n".join(md), "csv": text.getvalue(), "tex": "\n".join(tex),
                "json": json.dumps({"header": header, "rows": rows, "budgets": notes}, indent=2)}
    out_dir = Path(out_dir)
    return {ext: atomic_write_text(out_dir / f"{name}.{ext}", body) for ext, body in contents.items()}


def _eps_text(epsilon: float, norm: str) -> str:
    """ε as RobustBench writes it: `8/255` for an L∞ radius on that grid, else the number."""
    steps = epsilon * 255
    return f"{round(steps)}/255" if norm == "linf" and abs(steps - round(steps)) < 1e-6 else f"{epsilon:g}"


def robustbench_record(record: dict) -> dict:
    """One evaluated model in RobustBench's model-info form (`model_info/<dataset>/<threat>/<name>.json`).

    `autoattack_acc` is the accuracy under the `autoattack` attack when it ran (else null, with the reason in
    the footnote); accuracies are percentages as RobustBench writes them. RobustBench accepts only
    deterministic models: a random one is said so in `random` and the footnote. `reported` (the accuracy a
    paper reports) and `additional_data` are not known to an evaluation: null, for the author to fill in.

    Example:
        >>> robustbench_record(record)["threat_model"]
        'L2'
    """
    result, plan = record["result"], record["result"]["plan"]
    norm = plan.get("norm", "linf")
    autoattack = result["attacks"].get("autoattack")
    notes = [f"Evaluated by keras-pnil {VERSION}: {result['budget']}."]
    if autoattack is None:
        notes.append("AutoAttack was not run: autoattack_acc is null (Min over the attacks that ran is in "
                     "robust_acc).")
    if plan["random"]:
        notes.append("RANDOM model: its outputs change between calls on the same images, so it was attacked with "
                     "EOT (AutoAttack's rand version); RobustBench accepts only deterministic models.")
    return {"name": record.get("method", record.get("run")), "dataset": record["dataset"],
            "threat_model": ROBUSTBENCH_THREATS[norm], "eps": _eps_text(plan["epsilon"], norm),
            "bounds": list(plan.get("bounds", (0.0, 1.0))),
            "clean_acc": f"{100 * result['clean']:.2f}",
            "autoattack_acc": None if autoattack is None else f"{100 * autoattack['accuracy']:.2f}",
            "robust_acc": f"{100 * result['effective']:.2f}",
            "n_examples": autoattack["n_images"] if autoattack else len(plan["common_images"]),
            "architecture": record.get("architecture"), "additional_data": None, "reported": None,
            "number_forward_passes": plan["accuracy_draws"],
            "random": plan["random"], "budget": plan["label"], "footnote": " ".join(notes), "plan": plan}


def write_robustbench(records, out_dir) -> Path:
    """`robustbench.json`: one model's `robustbench_record`, or with several models a name → record object."""
    entries = [robustbench_record(r) for r in records]
    body = entries[0] if len(entries) == 1 else {e["name"]: e for e in entries}
    return atomic_write_json(Path(out_dir) / "robustbench.json", body)
