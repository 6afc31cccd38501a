"""The command-line entry points: `keras-pnil-train`, `keras-pnil-evaluate` and `keras-pnil-reproduce`.

Commands parse arguments, call the library (`runs`, `reproduce`, `report`)
and turn its exceptions into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from keras_pnil import report, reproduce, runs
from keras_pnil.attacks.registry import ATTACKS, get_attack
from keras_pnil.data import DATASETS, DatasetError
from keras_pnil.files import read_json
from keras_pnil.models import ARCHITECTURES
from keras_pnil.training import METHODS
from keras_pnil.validation import parse_epsilon

BUDGETS = {
    # Sized for a 2-core CPU: a labelled reduction of the paper's protocol.
    "quick": dict(pgd_steps=20, spsa_steps=10, spsa_samples=64, spsa_images=100, apgd_steps=20,
                  square_queries=300, eot_samples=4, accuracy_draws=5, num_images=500),
    # The paper's protocol (Section 4): PGD-50, SPSA 100 × 2048 on 1000 images, EOT 100; APGD and
    # Square (used by --attacks apgd-ce,apgd-dlr,square,autoattack and the masking checks) at AutoAttack's.
    "paper": dict(pgd_steps=50, spsa_steps=100, spsa_samples=2048, spsa_images=1000, apgd_steps=100,
                  square_queries=5000, eot_samples=100, accuracy_draws=10, num_images=5000),
}
# Errors a user can cause and fix: printed as one line, no traceback.
USER_ERRORS = (ValueError, OSError, DatasetError, runs.RunError, reproduce.SuiteError)


def _epsilon(text: str) -> float:
    try:
        return parse_epsilon(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _command(main):
    """Runs a command's body, turning a user error into `error: <message>` on stderr and exit status 1."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    return wrapped


# ---------------------------------------------------------------- keras-pnil-train
def train_parser() -> argparse.ArgumentParser:
    d = runs.TRAIN_DEFAULTS
    # Flags not given stay out of the namespace, so a --config file's values are not overridden by defaults.
    p = argparse.ArgumentParser(prog="keras-pnil-train", argument_default=argparse.SUPPRESS,
                                description="Adversarially train one of the paper's models.")
    p.add_argument("--config", help="JSON file of defaults (the paper's experiments are in train/)")
    p.add_argument("--out", required=True, help="run directory (re-running resumes it)")
    p.add_argument("--force", action="store_true", default=False,
                   help="retrain even if the run directory holds a finished run")
    p.add_argument("--dataset", choices=DATASETS, help=f"default {d['dataset']}")
    p.add_argument("--data-dir", help="directory of the official files (default: $KERAS_PNIL_DATA_DIR, else tfds)")
    p.add_argument("--architecture", choices=sorted(ARCHITECTURES),
                   help="the network (default: the paper's for the data set: small_cnn, or resnet11 for cifar10)")
    p.add_argument("--method", choices=sorted(METHODS), help=f"default {d['method']}")
    p.add_argument("--pnil", action=argparse.BooleanOptionalAction, help="put a PNIL first")
    p.add_argument("--epsilon", type=_epsilon, help="L∞ radius, e.g. 8/255 (default: the data set's)")
    p.add_argument("--epochs", type=int, help=f"default {d['epochs']}")
    p.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    p.add_argument("--seed", type=int, help=f"default {d['seed']}")
    p.add_argument("--strategy", choices=["default", "mirrored"], help="default: one device")
    p.add_argument("--train-size", type=int, help="train on a seeded random subset of this size")
    p.add_argument("--validation-size", type=int, help="validate on this many of the test-set half")
    p.add_argument("--fold", type=int, help="train on fold 0-9 of the 5×2 protocol (with --train-size: a subset)")
    p.add_argument("--lr-schedule", choices=["cyclical", "one_cycle"],
                   help="cyclical (the paper's, between --base-lr and --max-lr; default) or one_cycle "
                        "(Wong et al.: 0 → --max-lr at 2/5 of training → 0)")
    p.add_argument("--base-lr", type=float, help=f"default {d['base_lr']}")
    p.add_argument("--max-lr", type=float, help=f"default {d['max_lr']}")
    p.add_argument("--lr-range-test", action="store_true", help="pick the cyclical LR bounds with Smith's range test")
    p.add_argument("--eot-samples", type=int, help=f"NFGSM gradient samples L (default {d['eot_samples']})")
    p.add_argument("--noise-multiplier", type=float, help="NFGSM noise U(-kε, kε) (default 1)")
    p.add_argument("--alpha", type=float, help="RFGSM step (default: --alpha-ratio × ε)")
    p.add_argument("--alpha-ratio", type=float, help="RFGSM step in units of ε (paper 1.2, Wong et al. 1.25)")
    p.add_argument("--pgd-steps", type=int, help=f"PGD training steps (default {d['pgd_steps']})")
    p.add_argument("--monitor-images", type=int, help="validation images for the per-epoch PGD check (default 200)")
    p.add_argument("--monitor-eot", type=int, help="EOT samples of the per-epoch PGD check on PNIL models (default 4)")
    p.add_argument("--early-stop", action="store_true", help="stop on catastrophic overfitting")
    return p


@_command
def train_main(argv=None) -> int:
    args = vars(train_parser().parse_args(argv))
    out, force, config_file = Path(args.pop("out")), args.pop("force"), args.pop("config", None)
    if runs.is_finished(out) and not force:
        print(f"{out} holds a finished run ({(out / runs.DONE).read_text().strip()}); use --force to retrain.")
        return 0
    try:
        defaults = read_json(config_file) if config_file else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read config {config_file}: {err}") from None
    print(runs.train_run(runs.training_config({**defaults, **args}), out))
    return 0


# ---------------------------------------------------------------- keras-pnil-evaluate
def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keras-pnil-evaluate",
                                description="PGD and SPSA (with EOT) robustness of trained runs, as the paper's "
                                            "Table 1.")
    p.add_argument("runs", nargs="+", help="run directories written by keras-pnil-train")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="paper",
                   help="preset attack budget; the flags below override it")
    p.add_argument("--attacks", default="pgd,spsa",
                   help=f"comma-separated, from: {', '.join(ATTACKS)} (default: the paper's pgd,spsa)")
    p.add_argument("--epsilon", type=_epsilon, default=None, help="default: the run's training ε")
    p.add_argument("--eot-samples", type=int, help="EOT samples for models with a random layer")
    p.add_argument("--pgd-steps", type=int)
    p.add_argument("--pgd-restarts", type=int, help="PGD random restarts (default 1)")
    p.add_argument("--spsa-steps", type=int)
    p.add_argument("--spsa-samples", type=int, help="SPSA perturbations per image and step (the paper's samples)")
    p.add_argument("--spsa-images", type=int, help="the seeded subset for SPSA, Square and autoattack (paper: 1000)")
    p.add_argument("--apgd-steps", type=int)
    p.add_argument("--square-queries", type=int)
    p.add_argument("--num-images", type=int, help="test images (from the half not used for validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory for the tables, results and figures")
    return p


def _budget(args) -> dict:
    budget = dict(BUDGETS[args.budget])
    for key in ("eot_samples", "pgd_steps", "pgd_restarts", "spsa_steps", "spsa_samples", "spsa_images",
                "apgd_steps", "square_queries", "num_images"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    return budget


def _attacks(text: str) -> tuple:
    attacks = tuple(a.strip() for a in text.split(",") if a.strip())
    for name in attacks:
        get_attack(name)  # names the unknown one
    return attacks


@_command
def evaluate_main(argv=None) -> int:
    args = evaluate_parser().parse_args(argv)
    attacks, budget, out, cache = _attacks(args.attacks), _budget(args), Path(args.out), {}
    out.mkdir(parents=True, exist_ok=True)
    records = [runs.evaluate_run(Path(run), attacks, budget, out, cache, epsilon=args.epsilon, seed=args.seed,
                                 data_dir=args.data_dir) for run in args.runs]
    paths = report.write_tables(records, out)
    print(paths["md"].read_text())
    print(f"Tables: {', '.join(str(p) for p in paths.values())}")
    return 0


# ---------------------------------------------------------------- keras-pnil-reproduce
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


@_command
def reproduce_main(argv=None) -> int:
    args = reproduce_parser().parse_args(argv)
    suite = reproduce.load_suite(args.suite)
    datasets = args.datasets.split(",") if args.datasets else None
    specs = reproduce.grid(suite, args.budget, datasets)
    throughput = {d: reproduce.forward_throughput(d) for d in dict.fromkeys(s.dataset for s in specs)}
    seconds = reproduce.estimate_cost(suite, args.budget, specs, throughput)
    for dataset, cost in seconds.items():
        print(f"estimate: {dataset}: {sum(s.dataset == dataset for s in specs)} runs, about {cost / 3600:.1f} h "
              f"here (forward pass {throughput[dataset]:.0f} img/s measured now; a rough count of passes)")
    if args.estimate_only:
        return 0
    reproduce.run_suite(suite, args.budget, datasets, args.runs, args.results, args.data_dir, Path(args.suite).stem)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
