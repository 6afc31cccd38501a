"""The command-line entry points: `keras-pnil-train` and `keras-pnil-evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from keras_pnil.callbacks import atomic_write_text

BUDGETS = {
    # Sized for a 2-core CPU: a labelled reduction of the paper's protocol.
    "quick": dict(pgd_steps=20, spsa_steps=10, spsa_samples=64, spsa_images=100, apgd_steps=20,
                  square_queries=300, eot_samples=4, accuracy_draws=5, num_images=500),
    # The paper's protocol (Section 4): PGD-50, SPSA 100 × 2048 on 1000 images, EOT 100; APGD and
    # Square (used by --attacks apgd-ce,apgd-dlr,square,autoattack and the masking checks) at AutoAttack's.
    "paper": dict(pgd_steps=50, spsa_steps=100, spsa_samples=2048, spsa_images=1000, apgd_steps=100,
                  square_queries=5000, eot_samples=100, accuracy_draws=10, num_images=5000),
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
    p.add_argument("--fold", type=int, default=None, choices=range(10), metavar="0-9",
                   help="train on fold 0-9 of the 5×2 protocol (with --train-size: a subset of its half)")
    p.add_argument("--base-lr", type=float, default=1e-4)
    p.add_argument("--max-lr", type=float, default=1e-3)
    p.add_argument("--lr-range-test", action="store_true", help="pick the cyclical LR bounds with Smith's range test")
    p.add_argument("--eot-samples", type=int, default=1, help="NFGSM gradient samples L")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="NFGSM noise U(-kε, kε)")
    p.add_argument("--alpha", type=float, default=None, help="RFGSM step (default: --alpha-ratio × ε)")
    p.add_argument("--alpha-ratio", type=float, default=1.2, help="RFGSM step in units of ε (paper 1.2, Wong et al. 1.25)")
    p.add_argument("--pgd-steps", type=int, default=7, help="PGD training steps")
    p.add_argument("--monitor-images", type=int, default=200, help="validation images for the per-epoch PGD check")
    p.add_argument("--monitor-eot", type=int, default=4, help="EOT samples of the per-epoch PGD check on PNIL models")
    p.add_argument("--early-stop", action="store_true", help="stop on catastrophic overfitting")
    p.add_argument("--force", action="store_true", help="retrain even if the run directory holds a finished run")
    return p


def _method_options(args) -> dict:
    return {"nfgsm": {"eot_samples": args.eot_samples, "noise_multiplier": args.noise_multiplier},
            "rfgsm": {"alpha": args.alpha or args.alpha_ratio * args.epsilon},
            "pgd": {"steps": args.pgd_steps}}.get(args.method, {})


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _select(args, n_train: int, n_test: int):
    """Training images and the validation half of the test set (the other half is for evaluation)."""
    from keras_pnil.data import five_by_two_folds

    rng = np.random.default_rng(args.seed)
    if args.fold is not None:
        fold = five_by_two_folds(n_train, n_test, seed=args.seed)[args.fold]
        train_idx, val_idx = fold.train, fold.validation
    else:
        train_idx, val_idx = np.arange(n_train), np.sort(rng.permutation(n_test)[: n_test // 2])
    # --train-size takes a seeded subset (of the fold's half under --fold): reduced budgets.
    train_idx = np.sort(rng.permutation(train_idx)[: args.train_size or len(train_idx)])
    return train_idx, val_idx[: args.validation_size]


def train_main(argv=None) -> int:
    args = _with_config_defaults(train_parser(), argv)
    out = Path(args.out)
    if (out / "done.json").exists() and not args.force:
        print(f"{out} holds a finished run ({(out / 'done.json').read_text().strip()}); use --force to retrain.")
        return 0
    import keras

    from keras_pnil import data
    from keras_pnil.training import get_perturbation

    epsilon = args.epsilon = args.epsilon or data.DEFAULT_EPSILON[args.dataset]
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
    p.add_argument("--attacks", default="pgd,spsa",
                   help="comma-separated: pgd, spsa, apgd-ce, apgd-dlr, square, autoattack, pgd-no-eot "
                        "(default: the paper's)")
    p.add_argument("--epsilon", type=parse_epsilon, default=None, help="default: the run's training ε")
    p.add_argument("--eot-samples", type=int, help="EOT samples for models with a random layer")
    p.add_argument("--pgd-steps", type=int)
    p.add_argument("--spsa-steps", type=int)
    p.add_argument("--spsa-samples", type=int)
    p.add_argument("--spsa-images", type=int, help="the seeded subset for SPSA, Square and autoattack (paper: 1000)")
    p.add_argument("--apgd-steps", type=int)
    p.add_argument("--square-queries", type=int)
    p.add_argument("--num-images", type=int, help="test images (from the half not used for validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory for the tables, results and figures")
    return p


def load_run(run: Path):
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


def evaluation_images(config, data_cache, num_images: int, seed: int):
    """A seeded sample of `num_images` images the run neither trained nor validated on.

    A 5×2 fold is scored on the other half of the training set (the paper's
    protocol); any other run on test images outside its validation half.
    """
    from keras_pnil.data import five_by_two_folds

    (x_train, y_train), (x_test, y_test) = data_cache
    if config.get("fold") is not None:
        pool, x, y = five_by_two_folds(len(x_train), len(x_test), seed=config["seed"])[config["fold"]].test, x_train, y_train
    else:
        pool, x, y = np.setdiff1d(np.arange(len(x_test)), config.get("validation_indices", [])), x_test, y_test
    chosen = np.sort(np.random.default_rng(seed).permutation(pool)[:num_images])
    return x[chosen], y[chosen]


def _budget(args) -> dict:
    budget = dict(BUDGETS[args.budget])
    for key in ("eot_samples", "pgd_steps", "spsa_steps", "spsa_samples", "spsa_images", "apgd_steps",
                "square_queries", "num_images"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    return budget


def _parse_attacks(text: str) -> tuple:
    from keras_pnil.attacks import get_attack

    attacks = tuple(a.strip() for a in text.split(",") if a.strip())
    try:
        [get_attack(a) for a in attacks]
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    return attacks


def evaluate_run(run: Path, attacks, budget: dict, out: Path, data_cache: dict, *, epsilon=None,
                 seed: int = 0, data_dir=None, reuse: bool = False, label: str | None = None) -> dict:
    """Evaluates one training run; writes `<out>/<run name>.json` atomically and its PNIL maps.

    Returns the run's Table 1 record. With `reuse`, a result file written for
    the same attacks, budget, ε and seed is read back instead of recomputed
    (how the reproduce command resumes). `label` names the training method in
    the record (default: the run's method), for suites that vary its options.
    """
    from keras_pnil import data, evaluation, report
    from keras_pnil.layers import find_pnil, has_random_layer

    request = {"attacks": list(attacks), "budget": budget, "epsilon": epsilon, "seed": seed}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{run.name}.json"
    if reuse and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("request") == request:
            budget_used = evaluation.Budget(**{**stored["budget"], "attacks": tuple(attacks)})
            return {**stored["record"], "budget": budget_used.describe()}  # described as this version does
    config, model = load_run(run)
    dataset = config["dataset"]
    if dataset not in data_cache:
        data_cache[dataset] = data.load_dataset(dataset, data_dir)
    if tuple(model.input_shape[1:]) != data_cache[dataset][1][0].shape[1:]:
        raise SystemExit(f"error: {run} was trained on inputs {model.input_shape[1:]}, but {dataset} "
                         f"images are {data_cache[dataset][1][0].shape[1:]}: mismatched data set.")
    x, y = evaluation_images(config, data_cache[dataset], budget["num_images"], seed)
    options = {k: v for k, v in budget.items() if k != "num_images"}
    if not has_random_layer(model):
        options["eot_samples"] = 1  # EOT over a deterministic model changes nothing
    print(f"== {run}: {dataset}, {config['method']}{' + PNIL' if config['pnil'] else ''}")
    result = evaluation.robustness(model, x, y, epsilon or config["epsilon"], attacks, seed=seed,
                                   epochs=config.get("epochs"), **options)
    for check in result.checks:
        print(f"  [{'FLAGGED' if check['flagged'] else 'ok'}] {check['check']}: {check['detail']}")
    record = {"dataset": dataset, "method": label or config["method"], "pnil": config["pnil"], "run": str(run),
              "clean": result.clean, **result.attacks, "min": result.effective,
              "worst_case": result.worst_case, "n_train": config.get("n_train", 1),
              "n_test": config.get("n_train", 1), "fold": config.get("fold") or 0,
              "budget": result.budget.describe(), "checks": result.checks}
    atomic_write_text(path, json.dumps({"request": request, "record": record, **result.to_dict()}, indent=2))
    layer = find_pnil(model)
    if layer is not None:
        report.plot_pnil_maps(layer, x[0], out / f"{run.name}_pnil.png", title=f"{run.name}: learned PNIL")
    return record


def evaluate_main(argv=None) -> int:
    args = evaluate_parser().parse_args(argv)
    from keras_pnil import report

    attacks, budget, out, cache = _parse_attacks(args.attacks), _budget(args), Path(args.out), {}
    out.mkdir(parents=True, exist_ok=True)
    records = [evaluate_run(Path(run), attacks, budget, out, cache, epsilon=args.epsilon, seed=args.seed,
                            data_dir=args.data_dir) for run in args.runs]
    paths = report.write_tables(records, out)
    print(paths["md"].read_text())
    print(f"Tables: {', '.join(str(p) for p in paths.values())}")
    return 0


def reproduce_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keras-pnil-reproduce",
                                description="Run a suite's grid (default: the paper's Table 1): train, evaluate, "
                                            "tables and figures. Rerunning resumes where it stopped.")
    p.add_argument("--suite", default="table1", help="evaluate/<name>.json or a path (default: table1)")
    p.add_argument("--budget", default="quick", help="the suite's budget: quick (CPU) or paper (GPU)")
    p.add_argument("--datasets", default=None, help="comma-separated subset, e.g. mnist,fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default="runs/reproduce", help="where runs and evaluations go (resumed from)")
    p.add_argument("--results", default="docs/results", help="where the tables, figures and summary go")
    p.add_argument("--estimate-only", action="store_true", help="print the estimated cost and stop")
    return p


def reproduce_main(argv=None) -> int:
    args = reproduce_parser().parse_args(argv)
    from keras_pnil import reproduce

    try:
        suite = reproduce.load_suite(args.suite)
        datasets = args.datasets.split(",") if args.datasets else None
        specs = reproduce.grid(suite, args.budget, datasets)
    except reproduce.SuiteError as err:
        raise SystemExit(f"error: {err}")
    throughput = {d: reproduce.forward_throughput(d) for d in dict.fromkeys(s.dataset for s in specs)}
    seconds = reproduce.estimate_cost(suite, args.budget, specs, throughput)
    for dataset, cost in seconds.items():
        print(f"estimate: {dataset}: {sum(s.dataset == dataset for s in specs)} runs, about {cost / 3600:.1f} h "
              f"here (forward pass {throughput[dataset]:.0f} img/s measured now; a rough count of passes)")
    if args.estimate_only:
        return 0
    name = Path(args.suite).stem
    reproduce.run_suite(suite, args.budget, datasets, args.runs, args.results, args.data_dir, name)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
