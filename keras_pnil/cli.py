"""The command-line entry points: `keras-pnil-train` and `keras-pnil-evaluate`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from keras_pnil.callbacks import atomic_write_text

BUDGETS = {
    # Sized for a 2-core CPU: a labelled reduction of the paper's protocol.
    "quick": dict(pgd_steps=20, spsa_steps=10, spsa_samples=64, spsa_images=100, eot_samples=4,
                  accuracy_draws=5, num_images=500),
    # The paper's protocol (Section 4): PGD-50, SPSA 100 × 2048 on 1000 images, EOT 100.
    "paper": dict(pgd_steps=50, spsa_steps=100, spsa_samples=2048, spsa_images=1000, eot_samples=100,
                  accuracy_draws=10, num_images=5000),
}


def parse_epsilon(text: str) -> float:
    """'8/255', '0.03' or '4/255' → float in (0, 1)."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"epsilon must be a number or fraction like 8/255; got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"epsilon must lie in (0, 1); got {text!r}")
    return value


def _with_config_defaults(parser: argparse.ArgumentParser, argv):
    """Parses `argv`, taking defaults from the JSON file named by --config (command-line flags win)."""
    known, _ = parser.parse_known_args(argv)
    if known.config:
        try:
            defaults = json.loads(Path(known.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"cannot read config {known.config}: {err}")
        unknown = set(defaults) - {a.dest for a in parser._actions}
        if unknown:
            parser.error(f"config {known.config} has unknown keys {sorted(unknown)}")
        if "epsilon" in defaults:
            defaults["epsilon"] = parse_epsilon(str(defaults["epsilon"]))
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keras-pnil-train", description="Adversarially train one of the paper's models.")
    p.add_argument("--config", help="JSON file of defaults (the paper's experiments are in train/)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--data-dir", default=None, help="directory of the official files (default: $KERAS_PNIL_DATA_DIR, else tfds)")
    p.add_argument("--method", default="nfgsm", choices=["clean", "fgsm", "rfgsm", "nfgsm", "pgd"])
    p.add_argument("--pnil", action=argparse.BooleanOptionalAction, default=False, help="put a PNIL first")
    p.add_argument("--epsilon", type=parse_epsilon, default=None, help="L∞ radius, e.g. 8/255 (default: the data set's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (re-running resumes it)")
    p.add_argument("--strategy", default="default", choices=["default", "mirrored"])
    p.add_argument("--train-size", type=int, default=None, help="train on a seeded random subset of this size")
    p.add_argument("--validation-size", type=int, default=None, help="validate on this many of the test-set half")
    p.add_argument("--fold", type=int, default=None, help="train on fold 0-9 of the 5×2 protocol instead")
    p.add_argument("--base-lr", type=float, default=1e-4)
    p.add_argument("--max-lr", type=float, default=1e-3)
    p.add_argument("--lr-range-test", action="store_true", help="pick the cyclical LR bounds with Smith's range test")
    p.add_argument("--eot-samples", type=int, default=1, help="NFGSM gradient samples L")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="NFGSM noise U(-kε, kε)")
    p.add_argument("--alpha", type=float, default=None, help="RFGSM step (default 1.2ε)")
    p.add_argument("--pgd-steps", type=int, default=7, help="PGD training steps")
    p.add_argument("--monitor-images", type=int, default=200, help="validation images for the per-epoch PGD check")
    p.add_argument("--early-stop", action="store_true", help="stop on catastrophic overfitting")
    p.add_argument("--force", action="store_true", help="retrain even if the run directory holds a finished run")
    return p


def _method_options(args) -> dict:
    return {"nfgsm": {"eot_samples": args.eot_samples, "noise_multiplier": args.noise_multiplier},
            "rfgsm": {"alpha": args.alpha} if args.alpha else {},
            "pgd": {"steps": args.pgd_steps}}.get(args.method, {})


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _select(args, n_train: int, n_test: int):
    """Training images and the validation half of the test set (the other half is for evaluation)."""
    from keras_pnil.data import five_by_two_folds

    if args.fold is not None:
        fold = five_by_two_folds(n_train, n_test, seed=args.seed)[args.fold]
        train_idx, val_idx = fold.train, fold.validation
    else:
        rng = np.random.default_rng(args.seed)
        train_idx = np.sort(rng.permutation(n_train)[: args.train_size or n_train])
        val_idx = np.sort(rng.permutation(n_test)[: n_test // 2])
    return train_idx, val_idx[: args.validation_size]


def train_main(argv=None) -> int:
    args = _with_config_defaults(train_parser(), argv)
    out = Path(args.out)
    if (out / "done.json").exists() and not args.force:
        print(f"{out} holds a finished run ({(out / 'done.json').read_text().strip()}); use --force to retrain.")
        return 0
    import keras

    from keras_pnil import data, models
    from keras_pnil.training import get_perturbation

    epsilon = args.epsilon or data.DEFAULT_EPSILON[args.dataset]
    get_perturbation(args.method, epsilon, **_method_options(args))  # fail fast on bad options
    (x_train, y_train), (x_test, y_test) = data.load_dataset(args.dataset, args.data_dir)
    train_idx, val_idx = _select(args, len(x_train), len(x_test))
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    train_ds = data.make_dataset(x_train[train_idx], y_train[train_idx], args.batch_size, seed=args.seed)
    val_ds = data.make_dataset(x_test[val_idx], y_test[val_idx], args.batch_size, shuffle=False)
    steps = int(train_ds.cardinality())
    from keras_pnil.training import fit_run

    config = {**{k: v for k, v in vars(args).items() if k not in ("config", "force")}, "epsilon": epsilon,
              "method_options": _method_options(args), "n_train": int(len(train_idx)),
              "validation_indices": val_idx.tolist()}
    start = time.time()
    history = fit_run(config, _strategy(args.strategy), train_ds, val_ds, steps,
                      (x_test[val_idx][: args.monitor_images], y_test[val_idx][: args.monitor_images]), out)
    last = {k: float(v[-1]) for k, v in history.items()}
    summary = (f"{args.dataset} {args.method}{' +PNIL' if args.pnil else ''} ε={epsilon:.4g}: "
               f"{len(history.get('loss', []))} epochs this session in {time.time() - start:.0f}s; "
               f"val clean acc {last.get('val_clean_accuracy', float('nan')):.4f}, "
               f"val adv acc {last.get('val_accuracy', float('nan')):.4f}, "
               f"PGD acc {last.get('pgd_val_accuracy', float('nan')):.4f}; model in {out / 'model.keras'}")
    atomic_write_text(out / "done.json", json.dumps({"summary": summary}))
    print(summary)
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keras-pnil-evaluate",
                                description="PGD and SPSA (with EOT) robustness of trained runs, as the paper's Table 1.")
    p.add_argument("runs", nargs="+", help="run directories written by keras-pnil-train")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="paper",
                   help="preset attack budget; the flags below override it")
    p.add_argument("--attacks", default="pgd,spsa", help="comma-separated: pgd, spsa")
    p.add_argument("--epsilon", type=parse_epsilon, default=None, help="default: the run's training ε")
    p.add_argument("--eot-samples", type=int, help="EOT samples for models with a random layer")
    p.add_argument("--pgd-steps", type=int)
    p.add_argument("--spsa-steps", type=int)
    p.add_argument("--spsa-samples", type=int)
    p.add_argument("--spsa-images", type=int, help="SPSA's seeded subset (paper: 1000)")
    p.add_argument("--num-images", type=int, help="test images (from the half not used for validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory for the tables, results and figures")
    return p


def _load_run(run: Path):
    import keras

    import keras_pnil  # noqa: F401  (registers the PNIL layer for loading)

    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {run} is not a finished training run: cannot read config.json ({err})")
    try:
        model = keras.models.load_model(run / "model.keras")
    except Exception as err:  # Keras raises many types for unreadable files
        raise SystemExit(f"error: cannot load the model {run / 'model.keras'}: {err}")
    return config, model


def _evaluation_images(config, x_test, y_test, num_images: int, seed: int):
    """Test images outside the run's validation half, a seeded sample of `num_images`."""
    held_out = np.setdiff1d(np.arange(len(x_test)), config.get("validation_indices", []))
    chosen = np.sort(np.random.default_rng(seed).permutation(held_out)[:num_images])
    return x_test[chosen], y_test[chosen]


def _budget(args) -> dict:
    budget = dict(BUDGETS[args.budget])
    for key in ("eot_samples", "pgd_steps", "spsa_steps", "spsa_samples", "spsa_images", "num_images"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    return budget


def evaluate_main(argv=None) -> int:
    args = evaluate_parser().parse_args(argv)
    from keras_pnil import data, evaluation, report
    from keras_pnil.attacks import get_attack
    from keras_pnil.layers import find_pnil, has_random_layer

    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    try:
        [get_attack(a) for a in attacks]
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    budget, out, records, cache = _budget(args), Path(args.out), [], {}
    out.mkdir(parents=True, exist_ok=True)
    for run in map(Path, args.runs):
        config, model = _load_run(run)
        dataset = config["dataset"]
        if dataset not in cache:
            cache[dataset] = data.load_dataset(dataset, args.data_dir)[1]
        x_test, y_test = cache[dataset]
        if tuple(model.input_shape[1:]) != x_test.shape[1:]:
            raise SystemExit(f"error: {run} was trained on inputs {model.input_shape[1:]}, but {dataset} "
                             f"images are {x_test.shape[1:]}: mismatched data set.")
        x, y = _evaluation_images(config, x_test, y_test, budget["num_images"], args.seed)
        options = {k: v for k, v in budget.items() if k != "num_images"}
        if not has_random_layer(model):
            options["eot_samples"] = 1  # EOT over a deterministic model changes nothing
        print(f"== {run}: {dataset}, {config['method']}{' + PNIL' if config['pnil'] else ''}")
        result = evaluation.robustness(model, x, y, args.epsilon or config["epsilon"], attacks, seed=args.seed,
                                       epochs=config.get("epochs"), **options)
        atomic_write_text(out / f"{run.name}.json", json.dumps(result.to_dict(), indent=2))
        for check in result.checks:
            print(f"  [{'FLAGGED' if check['flagged'] else 'ok'}] {check['check']}: {check['detail']}")
        records.append({"dataset": dataset, "method": config["method"], "pnil": config["pnil"],
                        "run": str(run), "clean": result.clean, **result.attacks, "min": result.effective,
                        "worst_case": result.worst_case, "n_train": config.get("n_train", 1),
                        "n_test": config.get("n_train", 1), "fold": config.get("fold") or 0})
        layer = find_pnil(model)
        if layer is not None:
            report.plot_pnil_maps(layer, x[0], out / f"{run.name}_pnil.png", title=f"{run.name}: learned PNIL")
    paths = report.write_tables(records, out, result.budget.describe())
    print(paths["md"].read_text())
    print(f"Tables: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
