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

from keras_pnil import evaluation, experiments, report, reproduce, runs, targets
from keras_pnil.attacks.common import progress_bars
from keras_pnil.attacks.eot import probe
from keras_pnil.attacks.registry import ATTACKS, get_attack
from keras_pnil.data import DATASETS, DatasetError, load_npz
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
# Errors a user can cause and fix: printed as one line, no traceback (unless --debug).
USER_ERRORS = (ValueError, OSError, DatasetError, runs.RunError, reproduce.SuiteError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the flag, the value, what is allowed) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flag_type(convert, name: str):
    """An argparse `type` from a converter that raises ValueError, keeping the converter's message."""
    def parse(text: str):
        try:
            return convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer >= {minimum}; got {text!r}") from None
    if value < minimum:
        raise ValueError(f"must be an integer >= {minimum}; got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a positive number; got {text!r}") from None
    if not value > 0:
        raise ValueError(f"must be a positive number; got {text}")
    return value


def _even(text: str) -> int:
    value = _int(text, 2)
    if value % 2:
        raise ValueError(f"must be even (SPSA mirrors its perturbations); got {value}")
    return value


def _fold(text: str) -> int:
    value = _int(text, 0)
    if value >= runs.FOLDS:
        raise ValueError(f"must be one of 0-{runs.FOLDS - 1} (the 5×2 protocol); got {value}")
    return value


def _attack_names(text: str) -> tuple:
    attacks = tuple(a.strip() for a in text.split(",") if a.strip())
    if not attacks:
        raise ValueError("name at least one attack")
    for name in attacks:
        get_attack(name)  # names the unknown one
    return attacks


COUNT = _flag_type(lambda t: _int(t, 1), "count")
NONNEGATIVE = _flag_type(lambda t: _int(t, 0), "non-negative integer")
POSITIVE = _flag_type(_positive_float, "positive number")
EVEN = _flag_type(_even, "even count")
FOLD = _flag_type(_fold, "fold")
EPSILON = _flag_type(parse_epsilon, "epsilon")
ATTACK_NAMES = _flag_type(_attack_names, "attacks")


def _message(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)


def _command(main):
    """Runs a command's body, turning a user error into `error: <message>` on stderr and exit status 1."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as err:
            if "--debug" in (sys.argv[1:] if argv is None else argv):
                raise
            print(f"error: {_message(err)}", file=sys.stderr)
            return 1

    return wrapped


# ---------------------------------------------------------------- keras-pnil-train
def train_parser() -> argparse.ArgumentParser:
    d = runs.TRAIN_DEFAULTS
    # Flags not given stay out of the namespace, so a --config file's values are not overridden by defaults.
    p = _Parser(prog="keras-pnil-train", argument_default=argparse.SUPPRESS,
                description="Adversarially train one of the paper's models.")
    p.add_argument("--config", help="JSON file of defaults, or the name of a shipped one (mnist_nfgsm, "
                                    "fashion_mnist_rfgsm, mnist_eps03_wong, ...: see train/README.md)")
    p.add_argument("--out", required=True, help="run directory (re-running resumes it)")
    p.add_argument("--debug", action="store_true", default=False, help="show a traceback for errors")
    p.add_argument("--force", action="store_true", default=False,
                   help="retrain even if the run directory holds a finished run")
    p.add_argument("--dataset", choices=DATASETS, help=f"default {d['dataset']}")
    p.add_argument("--data-dir", help="directory of the official files (default: $KERAS_PNIL_DATA_DIR, else tfds)")
    p.add_argument("--architecture", choices=sorted(ARCHITECTURES),
                   help="the network (default: the paper's for the data set: small_cnn, or resnet11 for cifar10)")
    p.add_argument("--method", choices=sorted(METHODS), help=f"default {d['method']}")
    p.add_argument("--pnil", action=argparse.BooleanOptionalAction, help="put a PNIL first")
    p.add_argument("--epsilon", type=EPSILON, help="L∞ radius, e.g. 8/255 (default: the data set's)")
    p.add_argument("--epochs", type=COUNT, help=f"default {d['epochs']}")
    p.add_argument("--batch-size", type=COUNT, help=f"default {d['batch_size']}")
    p.add_argument("--seed", type=NONNEGATIVE, help=f"default {d['seed']}")
    p.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                   help="default: one device; mirrored: this machine's devices; multi_worker: the machines in "
                        "TF_CONFIG (start the command on each; the chief, worker 0, writes --out, worker i "
                        "--out/worker-i)")
    p.add_argument("--train-size", type=COUNT, help="train on a seeded random subset of this size")
    p.add_argument("--validation-size", type=COUNT, help="validate on this many of the test-set half")
    p.add_argument("--fold", type=FOLD, help="train on fold 0-9 of the 5×2 protocol (with --train-size: a subset)")
    p.add_argument("--lr-schedule", choices=["cyclical", "one_cycle"],
                   help="cyclical (the paper's, between --base-lr and --max-lr; default) or one_cycle "
                        "(Wong et al.: 0 → --max-lr at 2/5 of training → 0)")
    p.add_argument("--base-lr", type=POSITIVE, help=f"default {d['base_lr']}")
    p.add_argument("--max-lr", type=POSITIVE, help=f"default {d['max_lr']}")
    p.add_argument("--lr-range-test", action="store_true", help="pick the cyclical LR bounds with Smith's range test")
    p.add_argument("--eot-samples", type=COUNT, help=f"NFGSM gradient samples L (default {d['eot_samples']})")
    p.add_argument("--noise-multiplier", type=POSITIVE, help="NFGSM noise U(-kε, kε) (default 1)")
    p.add_argument("--alpha", type=POSITIVE, help="RFGSM step (default: --alpha-ratio × ε)")
    p.add_argument("--alpha-ratio", type=POSITIVE, help="RFGSM step in units of ε (paper 1.2, Wong et al. 1.25)")
    p.add_argument("--pgd-steps", type=COUNT, help=f"PGD training steps (default {d['pgd_steps']})")
    p.add_argument("--pnil-lr-multiplier", type=POSITIVE,
                   help="the PNIL's W and B learn at this multiple of the learning rate (default 1)")
    p.add_argument("--pnil-bias", type=float,
                   help=f"the PNIL's initial B, a log-variance in [-20, 4] (default {d['pnil_bias']}: σ ≈ 0.08)")
    p.add_argument("--patience", type=COUNT,
                   help="train to convergence: stop once the adversarial validation loss has not improved for "
                        "this many epochs (--epochs is then the most)")
    p.add_argument("--min-delta", type=float,
                   help="with --patience: a new low must lie this fraction below the best (default 0)")
    p.add_argument("--pgd-early-stop", action="store_true",
                   help="PGD training: step only the images still classified right (Wong et al.'s MNIST PGD)")
    p.add_argument("--monitor-images", type=COUNT, help="validation images for the per-epoch PGD check (default 200)")
    p.add_argument("--monitor-eot", type=COUNT,
                   help="EOT samples of the per-epoch PGD check on PNIL models (default 4)")
    p.add_argument("--early-stop", action="store_true", help="stop on catastrophic overfitting")
    p.add_argument("--checkpoint", choices=["best", "last"],
                   help="best: the lowest adversarial validation loss (default, the paper's); last: the final "
                        "weights (Wong et al.'s)")
    return p


@_command
def train_main(argv=None) -> int:
    args = vars(train_parser().parse_args(argv))
    out, force, config_file = Path(args.pop("out")), args.pop("force"), args.pop("config", None)
    args.pop("debug")
    if runs.is_finished(out) and not force:
        print(f"{out} holds a finished run ({(out / runs.DONE).read_text().strip()}); use --force to retrain.")
        return 0
    try:
        defaults = read_json(experiments.train_config_path(config_file)) if config_file else {}
    except OSError as err:
        raise ValueError(f"cannot read config {config_file}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"config {config_file} is not valid JSON: {err}") from None
    print(runs.train_run(runs.training_config({**defaults, **args}), out))
    return 0


# ---------------------------------------------------------------- keras-pnil-evaluate
def evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="keras-pnil-evaluate",
                description="Robustness of trained runs or of any Keras model file (.keras): clean accuracy, each "
                            "attack (with EOT for random models), Min, masking checks; tables and results.csv.")
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a run directory written by keras-pnil-train, or a Keras model file (.keras)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="evaluate model files on a seeded sample of this data set's test split")
    p.add_argument("--data", help="evaluate on your own arrays: a .npz file with x (N, H, W, C) floats in [0, 1] "
                                  "and y (N,) integer labels (the first --num-images of them)")
    p.add_argument("--custom-objects", action="append", default=[], metavar="FILE.py",
                   help="a Python file that defines and registers your own layers, imported before loading "
                        "(repeatable; Keras' safe mode stays on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="paper",
                   help="preset attack budget; the flags below override it")
    p.add_argument("--attacks", type=ATTACK_NAMES, default=("pgd", "spsa"),
                   help=f"comma-separated, from: {', '.join(ATTACKS)} (default: the paper's pgd,spsa)")
    p.add_argument("--epsilon", type=EPSILON, default=None,
                   help="L∞ radius, e.g. 8/255 (required for model files; default for runs: the training ε)")
    p.add_argument("--eot-samples", type=COUNT, help="EOT draws for random models (default: the budget's)")
    p.add_argument("--pgd-steps", type=COUNT)
    p.add_argument("--pgd-restarts", type=COUNT, help="PGD random restarts (default 1)")
    p.add_argument("--spsa-steps", type=COUNT)
    p.add_argument("--spsa-samples", type=EVEN, help="SPSA perturbations per image and step (the paper's samples)")
    p.add_argument("--spsa-images", type=COUNT,
                   help="the seeded subset for SPSA (and Square, FAB-T, autoattack unless set below; paper: 1000)")
    p.add_argument("--square-images", type=COUNT, help="images for Square (default: --spsa-images)")
    p.add_argument("--autoattack-images", type=COUNT, help="images for autoattack and fab-t (default: --spsa-images)")
    p.add_argument("--spsa-eot-samples", type=COUNT, help="EOT draws of SPSA on random models (default: --eot-samples)")
    p.add_argument("--square-eot-samples", type=COUNT,
                   help="EOT draws of Square on random models (default: --eot-samples)")
    p.add_argument("--autoattack-eot-samples", type=COUNT,
                   help="EOT draws of autoattack and fab-t on random models (default: --eot-samples)")
    p.add_argument("--apgd-steps", type=COUNT)
    p.add_argument("--fab-steps", type=COUNT)
    p.add_argument("--target-classes", type=COUNT, help="target classes of apgd-t and fab-t (AutoAttack: 9)")
    p.add_argument("--square-queries", type=COUNT)
    p.add_argument("--num-images", type=COUNT,
                   help="images to evaluate: the first N of --data, else a seeded sample (default: the budget's)")
    p.add_argument("--seed", type=NONNEGATIVE, default=0)
    p.add_argument("--out", required=True, help="directory for the tables, results.csv/json and figures")
    p.add_argument("--estimate-only", action="store_true", help="print the estimated time and stop")
    p.add_argument("--debug", action="store_true", help="show a traceback for errors")
    return p


def _budget(args) -> dict:
    budget = dict(BUDGETS[args.budget])
    for key in ("eot_samples", "pgd_steps", "pgd_restarts", "spsa_steps", "spsa_samples", "spsa_images",
                "apgd_steps", "fab_steps", "target_classes", "square_queries", "num_images", "square_images",
                "autoattack_images", "spsa_eot_samples", "square_eot_samples", "autoattack_eot_samples"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    return budget


def _user_images(args, budget: dict) -> tuple | None:
    """(x, y, name) for model files: the first --num-images of --data, or a sample of --dataset's test split."""
    if args.data:
        x, y = load_npz(args.data)
        count = args.num_images or len(x)
        return x[:count], y[:count], Path(args.data).name
    if args.dataset:
        return (*targets.test_split_images(args.dataset, args.data_dir, budget["num_images"], args.seed),
                args.dataset)
    return None


def _estimate(jobs: list, attacks, budget: dict) -> float:
    """Prints and returns the estimated seconds of the evaluations, from a forward pass timed on each model."""
    total = 0.0
    for target, model, n_images in jobs:
        eot = budget["eot_samples"] if probe(model).random else 1
        rate = evaluation.forward_throughput(model, model.input_shape[1:])
        seconds = evaluation.cost_units({**budget, "num_images": n_images}, eot, attacks) / rate
        total += seconds
        print(f"estimate: {target}: {n_images} images, EOT {eot}, about {seconds / 60:.1f} min here "
              f"(forward pass {rate:.0f} img/s measured now; a rough count of passes)")
    print(f"estimate: about {total / 60:.1f} min in all")
    return total


@_command
def evaluate_main(argv=None) -> int:
    args = evaluate_parser().parse_args(argv)
    budget, out, cache = _budget(args), Path(args.out), {}
    paths = [Path(t) for t in args.targets]
    for path in paths:
        targets.check_target(path)  # every target is usable before any is evaluated
    files = [p for p in paths if targets.is_model_file(p)]
    if files and args.epsilon is None:
        raise ValueError(f"--epsilon is required for a model file ({files[0]}): it has no training ε to default to")
    if files and not (args.data or args.dataset):
        raise ValueError(f"a model file ({files[0]}) needs images: --dataset NAME or --data FILE.npz")
    targets.import_custom_objects(args.custom_objects)
    images = _user_images(args, budget)
    jobs = []
    for path in paths:
        if targets.is_model_file(path) or args.data:
            model = targets.load_model_file(targets.model_path(path))
            runs.check_model_inputs(model, images[0], images[1], f"{images[2]} images")
            jobs.append((path, model, len(images[0])))
        else:
            jobs.append((path, runs.load_run(path)[1], budget["num_images"]))
    _estimate(jobs, args.attacks, budget)
    if args.estimate_only:
        return 0
    del jobs  # the models are loaded again, one at a time, by the evaluations
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with progress_bars():
        for path in paths:
            records.append(_evaluate_target(path, images, args, budget, out, cache))
    tables = report.write_tables(records, out)
    results = report.write_results(records, out)
    print(tables["md"].read_text())
    print(f"Tables: {', '.join(str(p) for p in [*tables.values(), *results.values()])}")
    return 0


def _evaluate_target(path: Path, images, args, budget: dict, out: Path, cache: dict) -> dict:
    # A target already evaluated with the same request (a killed command started again) is read back.
    if targets.is_model_file(path) or args.data:  # a model file, or a run's model on the user's own images
        epsilon = args.epsilon or runs.check_run(path)["epsilon"]
        return targets.evaluate_file(targets.model_path(path), images[:2], images[2], args.attacks, budget, out,
                                     epsilon, seed=args.seed, name=path.stem, reuse=True)
    return runs.evaluate_run(path, args.attacks, budget, out, cache, epsilon=args.epsilon, seed=args.seed,
                             data_dir=args.data_dir, reuse=True)


# ---------------------------------------------------------------- keras-pnil-reproduce
def reproduce_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="keras-pnil-reproduce",
                description="Run a suite's grid (default: the paper's Table 1): train, evaluate, tables and "
                            "figures. Rerunning resumes where it stopped.")
    p.add_argument("--suite", default="table1",
                   help="a shipped suite (table1, large_eps, mnist_eps03) or a suite file's path (default: table1)")
    p.add_argument("--budget", default=None,
                   help="one of the suite's budgets (default: its default_budget, else quick)")
    p.add_argument("--datasets", default=None, help="comma-separated subset, e.g. mnist,fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default="runs/reproduce", help="where runs and evaluations go (resumed from)")
    p.add_argument("--results", default="docs/results", help="where the tables, figures and summary go")
    p.add_argument("--estimate-only", action="store_true", help="print the estimated cost and stop")
    p.add_argument("--report-only", action="store_true",
                   help="train and attack nothing: write the tables and summary of the runs finished so far")
    p.add_argument("--debug", action="store_true", help="show a traceback for errors")
    return p


@_command
def reproduce_main(argv=None) -> int:
    args = reproduce_parser().parse_args(argv)
    suite = reproduce.load_suite(args.suite)
    budget = args.budget or suite.get("default_budget", "quick")
    datasets = args.datasets.split(",") if args.datasets else suite.get("default_datasets")
    specs = reproduce.grid(suite, budget, datasets)
    if args.report_only:
        reproduce.run_suite(suite, budget, datasets, args.runs, args.results, args.data_dir, Path(args.suite).stem,
                            report_only=True)
        return 0
    throughput = {d: reproduce.forward_throughput(d, suite["datasets"][d].get("architecture"))
                  for d in dict.fromkeys(s.dataset for s in specs)}
    seconds = reproduce.estimate_cost(suite, budget, specs, throughput)
    for dataset, cost in seconds.items():
        print(f"estimate: {dataset}: {sum(s.dataset == dataset for s in specs)} runs, about {cost / 3600:.1f} h "
              f"here (forward pass {throughput[dataset]:.0f} img/s measured now; a rough count of passes)")
    if args.estimate_only:
        return 0
    reproduce.run_suite(suite, budget, datasets, args.runs, args.results, args.data_dir, Path(args.suite).stem)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
