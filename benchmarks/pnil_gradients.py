"""How hard, and how consistently, the training loss pulls on a PNIL's W and B: at initialisation and after training.

For each PNIL training run given, the run's own training perturbation is applied to batches of its own
training images and the gradient of the cross-entropy with respect to W and B is taken per batch
(`keras_pnil.pnil_diagnostics.pnil_gradients`), once for the run's initial weights (rebuilt from its
configuration and seed) and once for its trained model. Adam moves a parameter by about its learning
rate × the sign consistency of its gradient per step, so the table says how far B and W could travel in
the run's steps. Usage:

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/pnil_gradients.py RUN [RUN ...] \
        [--images 5000] [--out gradients.json]
"""

import argparse
from pathlib import Path

import numpy as np

import keras_pnil as kp
from keras_pnil import recipe, runs


def gradient_rows(run: Path, images: int) -> dict:
    config, model = runs.load_run(run)
    (x, y), (xt, _) = kp.data.load_dataset(config["dataset"], config.get("data_dir"))
    train_idx, _ = runs.training_indices(config, len(x), len(xt))
    chosen = np.sort(np.random.default_rng(1).permutation(train_idx)[:images])
    trained = kp.adversarial(model, config["method"], config["epsilon"], **config["method_options"])
    return {"initial": kp.pnil_diagnostics.pnil_gradients(recipe.build_trainer(config), x[chosen], y[chosen]),
            "trained": kp.pnil_diagnostics.pnil_gradients(trained, x[chosen], y[chosen]),
            "steps": int(config["n_train"] // config["batch_size"]) * len(kp.history.read_history(
                run / runs.HISTORY).get("epoch", [])), "max_lr": config["max_lr"] * config["pnil_lr_multiplier"]}


def markdown(results: dict) -> str:
    lines = ["| run | weights | group | B: mean abs g | B: mean g | B: consistency | W: mean abs g | W: consistency "
             "| B's reach (steps × max rate × consistency) |", "|---|---|---|---|---|---|---|---|---|"]
    for run, result in results.items():
        for state in ("initial", "trained"):
            stats = result[state]
            for group in ("object", "background"):
                b, w = stats[f"{group}_B"], stats[f"{group}_W"]
                reach = result["steps"] * result["max_lr"] * b["consistency"]
                lines.append(f"| {Path(run).name} | {state} | {group} | {b['mean_abs']:.2e} | {b['mean']:+.2e} | "
                             f"{b['consistency']:.2f} | {w['mean_abs']:.2e} | {w['consistency']:.2f} | {reach:.2f} |")
    noise = next(iter(results.values()))["initial"]["pure_noise_consistency"]
    lines.append(f"\nConsistency of independent pushes over these {round(noise ** -2)} batches: {noise:.2f}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=5000, help="training images (batches of the run's size)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    results = {str(run): gradient_rows(run, args.images) for run in args.runs}
    print(markdown(results))
    if args.out:
        kp.files.atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
