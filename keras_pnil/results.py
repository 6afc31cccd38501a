"""The evaluate command's results: a tidy `results.csv`/`results.json` and a one-row-per-model table.

Every number and label here is read from an evaluation's stored result (its
`RobustnessResult.to_dict()`, which holds the resolved plan), never re-derived.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from keras_pnil.files import atomic_write_json, atomic_write_text

# One row per model, data set and attack (plus clean and Min).
RESULT_COLUMNS = ("model", "dataset", "epsilon", "attack", "accuracy", "clean_accuracy", "n_images", "eot_samples",
                  "accuracy_draws", "budget", "label")


def result_rows(model: str, dataset: str, result: dict) -> list[dict]:
    """The tidy rows of one evaluation (`RobustnessResult.to_dict()`): clean, each attack, and Min.

    Each attack row states the clean accuracy on its own images; Min's row is
    on the images every attack saw, with their count.

    Example:
        >>> [row["attack"] for row in result_rows("m", "mnist", result.to_dict())]
        ['clean', 'pgd', 'spsa', 'min']
    """
    plan = result["plan"]
    base = {"model": model, "dataset": dataset, "epsilon": plan["epsilon"], "accuracy_draws": plan["accuracy_draws"],
            "label": plan["label"]}
    rows = [{**base, "attack": "clean", "accuracy": result["clean"], "clean_accuracy": result["clean"],
             "n_images": plan["num_images"], "eot_samples": "", "budget": "no attack"}]
    for name, attack in result["attacks"].items():
        rows.append({**base, "attack": name, "accuracy": attack["accuracy"], "clean_accuracy": attack["clean"],
                     "n_images": attack["n_images"], "eot_samples": attack["eot_samples"], "budget": attack["budget"]})
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
                "worst_case_per_image": r["result"]["worst_case_per_image"], "plan": r["result"]["plan"]}
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
