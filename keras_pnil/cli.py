"""The command-line entry points: `keras-pnil-train`, `keras-pnil-evaluate` and `keras-pnil-reproduce`.

Commands parse arguments, call the library (`runs`, `reproduce`, `report`)
and turn its exceptions into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from keras_pnil import experiments, jobs, loading, replicas, report, reproduce, results, runs, targets
from keras_pnil.attacks.common import progress_bars
from keras_pnil.attacks.lanes import threads_for_lanes
from keras_pnil.attacks.registry import ATTACKS
from keras_pnil.data import DATASETS, DatasetError, load_npz
from keras_pnil.evaluation import evaluate
from keras_pnil.files import check_writable, exclusive, read_json
from keras_pnil.inputs import check_attack_names
from keras_pnil.methods import METHODS, Option, all_options
from keras_pnil.methods import registry as method_registry
from keras_pnil.models import ARCHITECTURES
from keras_pnil.plan import PRESETS, PlanRequest
from keras_pnil.records import read_record
from keras_pnil.threat import NORMS
from keras_pnil.validation import check_bounds, check_epsilon, parse_epsilon, parse_radius

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


def _fold(text: str) -> int:
    value = _int(text, 0)
    if value >= runs.FOLDS:
        raise ValueError(f"must be one of 0-{runs.FOLDS - 1} (the 5×2 protocol); got {value}")
    return value


COUNT = _flag_type(lambda t: _int(t, 1), "count")
NONNEGATIVE = _flag_type(lambda t: _int(t, 0), "non-negative integer")
POSITIVE = _flag_type(_positive_float, "positive number")
FOLD = _flag_type(_fold, "fold")
EPSILON = _flag_type(parse_epsilon, "epsilon")
# A radius as typed ('8/255', '2'): a positive number now, checked against the norm (which may come later on the
# line or from --config) by `_training_epsilon`.
RADIUS_TEXT = _flag_type(lambda text: parse_radius(text) and text, "epsilon")
ATTACK_NAMES = _flag_type(check_attack_names, "attacks")


def _message(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return _with_flags(str(err))


def _command(main):
    """Runs a command's body, turning a user error into `error: <message>` on stderr and exit status 1.

    The library reports progress through the `keras_pnil` logger; a command shows it on stdout.
    """
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        _show_progress()
        try:
            return main(argv)
        except USER_ERRORS as err:
            if "--debug" in (sys.argv[1:] if argv is None else argv):
                raise
            print(f"error: {_message(err)}", file=sys.stderr)
            return 1

    return wrapped


class _Interrupt:
    seen = False


@contextlib.contextmanager
def _interrupts():
    """Within, Ctrl-C raises KeyboardInterrupt as always and is also recorded (`.seen`): an interrupt that lands
    inside TensorFlow (tracing a graph, say) can surface as another exception, which is then still an
    interrupt, not a crash."""
    interrupt = _Interrupt()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield interrupt
        return

    def record(signum, frame):
        interrupt.seen = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, record)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _Stdout(logging.Handler):
    """The library's progress lines on whatever `sys.stdout` is when they come."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), flush=True)


def _show_progress() -> None:
    logger = logging.getLogger("keras_pnil")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        logger.addHandler(_Stdout())
    logger.setLevel(logging.INFO)


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
    p.add_argument("--method", choices=sorted(METHODS),
                   help=f"default {d['method']}; " + "; ".join(f"{n}: {m.about}" for n, m in METHODS.items()))
    p.add_argument("--pnil", action=argparse.BooleanOptionalAction, help="put a PNIL first")
    p.add_argument("--epsilon", type=RADIUS_TEXT,
                   help="the radius for pixels in [0, 1]: L∞ in (0, 1), e.g. 8/255 (default: the data set's); L2 any "
                        "positive number, e.g. 2.0 (required with --norm l2)")
    p.add_argument("--norm", choices=list(NORMS),
                   help="the threat model's norm (default linf): l2 trains rfgsm (FGSM-RS), nfgsm (N-FGSM), pgd, fgsm "
                        "and trades with normalised-gradient steps in the L2 ball; gradalign and elle are L∞ only; "
                        "keras-pnil-evaluate then attacks the run in this norm")
    p.add_argument("--epochs", type=COUNT, help=f"default {d['epochs']}")
    p.add_argument("--batch-size", type=COUNT, help=f"default {d['batch_size']}")
    p.add_argument("--seed", type=NONNEGATIVE, help=f"default {d['seed']}")
    p.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                   help="default: one device; mirrored: this machine's devices; multi_worker: the machines in "
                        "TF_CONFIG (start the command on each; the chief, worker 0, writes --out, worker i "
                        "--out/worker-i)")
    p.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction,
                   help="Keras' mixed_float16: float16 compute, float32 weights, loss scaling for the weights and "
                        "for the attack's input gradient (for GPUs; slow on a CPU)")
    p.add_argument("--train-size", type=COUNT, help="train on a seeded random subset of this size")
    p.add_argument("--validation-size", type=COUNT, help="validate on this many of the test-set half")
    p.add_argument("--fold", type=FOLD, help="train on fold 0-9 of the 5×2 protocol (with --train-size: a subset)")
    p.add_argument("--lr-schedule", choices=["cyclical", "one_cycle", "cyclic_lr"],
                   help="cyclical (the paper's, between --base-lr and --max-lr; default), one_cycle "
                        "(Wong et al.'s MNIST: 0 → --max-lr at 2/5 of training → 0) or cyclic_lr (Wong et al.'s "
                        "CIFAR-10, PyTorch's CyclicLR: 0 → --max-lr at the middle of training → 0, per step)")
    p.add_argument("--optimizer", choices=["adam", "sgd"],
                   help="adam (the paper's; default) or sgd (PyTorch's SGD, the CIFAR-10 references')")
    p.add_argument("--momentum", type=float, help=f"sgd's momentum (default {d['momentum']})")
    p.add_argument("--weight-decay", type=float,
                   help="sgd's L2 weight decay on every trainable weight, coupled as PyTorch's (default 0; the "
                        "CIFAR-10 references: 5e-4)")
    p.add_argument("--augment", choices=["none", "crop_flip"],
                   help="training-set augmentation: none (default) or crop_flip (pad 4, random crop, random "
                        "horizontal flip: the CIFAR-10 references')")
    p.add_argument("--depth", type=COUNT, help=f"wide_resnet's depth, 6n + 4 (default {d['depth']})")
    p.add_argument("--width", type=COUNT, help=f"wide_resnet's widening factor (default {d['width']})")
    p.add_argument("--base-lr", type=POSITIVE, help=f"default {d['base_lr']}")
    p.add_argument("--max-lr", type=POSITIVE, help=f"default {d['max_lr']}")
    p.add_argument("--lr-range-test", action="store_true", help="pick the cyclical LR bounds with Smith's range test")
    p.add_argument("--pnil-lr-multiplier", type=POSITIVE,
                   help="the PNIL's W and B learn at this multiple of the learning rate (default 1)")
    p.add_argument("--pnil-bias", type=float,
                   help=f"the PNIL's initial B, a log-variance in [-20, 4] (default {d['pnil_bias']}: σ ≈ 0.08)")
    p.add_argument("--patience", type=COUNT,
                   help="train to convergence: stop once the adversarial validation loss has not improved for "
                        "this many epochs (--epochs is then the most)")
    p.add_argument("--min-delta", type=float,
                   help="with --patience: a new low must lie this fraction below the best (default 0)")
    p.add_argument("--monitor-images", type=COUNT, help="validation images for the per-epoch PGD check (default 200)")
    p.add_argument("--monitor-eot", type=COUNT,
                   help="EOT samples of the per-epoch PGD check on PNIL models (default 4)")
    p.add_argument("--early-stop", action="store_true", help="stop on catastrophic overfitting")
    p.add_argument("--early-stop-rule", choices=["best", "wong"],
                   help="with --early-stop: best (default: the validation PGD check falls 20 points below its best) "
                        "or wong (Wong et al.'s CIFAR-10 rule: PGD-5 on a training batch falls 20 points below the "
                        "previous epoch's)")
    p.add_argument("--checkpoint", choices=["best", "last"],
                   help="best: the lowest adversarial validation loss (default, the paper's); last: the final "
                        "weights (Wong et al.'s)")
    methods = p.add_argument_group("training methods' options (each applies to its method only)")
    for option in all_options():
        _add_option_flag(methods, option)
    return p


def _add_option_flag(parser, option: Option) -> None:
    """A training method's declared option as a flag: `--key-with-dashes`."""
    if option.is_switch:
        parser.add_argument(option.flag, action="store_true", help=option.help)
        return
    known = {method_registry.count: COUNT, method_registry.positive: POSITIVE,
             method_registry.optional_positive: POSITIVE}
    parser.add_argument(option.flag, type=known.get(option.check) or _flag_type(option.parse, option.key),
                        help=option.help)


@_command
def train_main(argv=None) -> int:
    parser = train_parser()
    args = vars(parser.parse_args(argv))
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
    if "epsilon" in args:
        args["epsilon"] = _training_epsilon(parser, args["epsilon"], args.get("norm", defaults.get("norm", "linf")))
    print(runs.train_run(runs.training_config({**defaults, **args}), out))
    return 0


def _training_epsilon(parser, text: str, norm) -> float | str:
    """--epsilon checked against the run's norm, as a flag error (an unknown norm is left to the configuration)."""
    if norm not in NORMS:
        return text
    try:
        return runs.training_epsilon(text, norm)
    except ValueError as err:
        parser.error(f"argument --epsilon: {str(err).rstrip('.')}")


# ---------------------------------------------------------------- keras-pnil-evaluate
SHORTER = "--num-images, --budget quick, --attacks or --set ATTACK.FIELD=VALUE"


def _setting(text: str) -> tuple[str, object]:
    """`ATTACK.FIELD=VALUE` (or a global such as `num_images=500`) → (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected ATTACK.FIELD=VALUE (e.g. pgd.steps=20); got {text!r}")
    key, value = key.strip(), _value(value.strip())
    PlanRequest.from_preset("paper").with_values({key: value})  # names an unknown field or a bad value now
    return key, value


def _value(text: str):
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return parse_epsilon(text) if "/" in text else float(text)
    except ValueError:
        raise ValueError(f"expected a number, true, false or none; got {text!r}") from None


SETTING = _flag_type(_setting, "setting")
RADIUS = _flag_type(parse_radius, "epsilon")


def _bounds(text: str) -> tuple[float, float]:
    """`LO,HI` (e.g. `0,255` or `-1,1`) → (lo, hi), lo < hi."""
    parts = text.split(",")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise ValueError(f"expected LO,HI (e.g. 0,255 or -1,1); got {text!r}")
    lo, hi = values
    if not lo < hi:
        raise ValueError(f"LO must be below HI (e.g. 0,255); got {text!r}")
    return check_bounds(values)


BOUNDS = _flag_type(_bounds, "bounds")


def evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="keras-pnil-evaluate",
                description="Robustness of trained runs or of any Keras model file (.keras, .h5): clean accuracy, "
                            "each attack (with EOT for random models), Min, masking checks; tables and results.csv. "
                            "Every number comes from one plan (--show-plan prints it).")
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a run directory written by keras-pnil-train, or a Keras model file (.keras, .h5)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="evaluate model files on a seeded sample of this data set's test split")
    p.add_argument("--data", help="evaluate on your own arrays: a .npz file with x (N, H, W, C) floats in [0, 1] "
                                  "and y (N,) integer labels (the first --num-images of them)")
    p.add_argument("--custom-objects", action="append", default=[], metavar="FILE.py",
                   help="a Python file that defines and registers your own layers, imported before loading "
                        "(repeatable; Keras' safe mode stays on)")
    p.add_argument("--output", help="the logits output of a model with several outputs (a name or an index)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget", choices=sorted(PRESETS), default=None,
                   help="preset plan (default: autoattack, AutoAttack's own budget, for model files; paper for "
                        "runs); the flags below override it")
    p.add_argument("--plan", metavar="FILE.json", help="start from a plan file (as --show-plan prints it)")
    p.add_argument("--attacks", type=ATTACK_NAMES, default=None,
                   help=f"comma-separated, from: {', '.join(ATTACKS)} (default: the budget's)")
    p.add_argument("--epsilon", type=RADIUS, default=None,
                   help="the radius in the units of the model's inputs, e.g. 8/255 for L∞ on [0, 1], 0.5 for L2 "
                        "(required for model files; default for runs: the training ε)")
    p.add_argument("--norm", choices=list(NORMS), default=None,
                   help="the threat model's norm of model files (default linf): l2 and l1 run every attack's version "
                        "in that norm (SPSA is L∞ only; Square has no L1 version). A training run is evaluated in the "
                        "norm it was trained in (its config's; L∞ runs with the paper's budget, others with "
                        "AutoAttack's); a different --norm on a run is an error")
    p.add_argument("--bounds", type=BOUNDS, default=None, metavar="LO,HI",
                   help="the range of the model's inputs, e.g. 0,255 or -1,1 (default 0,1); ε is in these units, "
                        "and --dataset images are mapped from [0, 1] onto it")
    p.add_argument("--num-images", type=COUNT,
                   help="images to evaluate: the first N of --data, else a seeded sample (default: the budget's)")
    p.add_argument("--eot-samples", type=COUNT, help="EOT draws for random models (default: the budget's)")
    p.add_argument("--set", dest="settings", type=SETTING, action="append", default=[], metavar="ATTACK.FIELD=VALUE",
                   help="set one number of the plan, e.g. pgd.steps=20, spsa.images=100, square.eot_samples=2, "
                        "checks.enabled=false (repeatable; --show-plan lists every field)")
    p.add_argument("--seed", type=NONNEGATIVE, default=None, help="seeds the image sample and the attacks (default 0)")
    p.add_argument("--strategy", choices=list(replicas.STRATEGIES), default="default",
                   help="default: one device; mirrored: every attack data-parallel over this machine's GPUs (its "
                        "logical CPUs without one), with exactly the default's results for the same seed; "
                        "multi_worker: the same over the machines of TF_CONFIG, each running this same command "
                        "(the chief, worker 0, writes --out; the others write nothing)")
    p.add_argument("--out", required=True, help="directory for the tables, results.csv/json and figures")
    p.add_argument("--show-plan", action="store_true", help="print the resolved plan of each target and stop")
    p.add_argument("--estimate-only", action="store_true", help="print the estimated time and stop")
    p.add_argument("--debug", action="store_true", help="show a traceback for errors")
    return p


def _request(args, autoattack: bool) -> PlanRequest:
    """The plan request: a plan file or a preset (default: AutoAttack's budget if `autoattack`, else the paper's),
    then the common flags and every --set."""
    if args.plan:
        try:
            request = PlanRequest.from_dict(read_json(args.plan))
        except OSError as err:
            raise ValueError(f"cannot read plan {args.plan}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"plan {args.plan} is not valid JSON: {err}") from None
        if args.budget:
            raise ValueError("--plan and --budget both choose a starting plan; give one of them")
    else:
        request = PlanRequest.from_preset(args.budget or ("autoattack" if autoattack else "paper"))
    if args.attacks:
        request = request.with_attacks(args.attacks)
    common = {"num_images": args.num_images, "eot_samples": args.eot_samples, "seed": args.seed}
    values = {k: v for k, v in common.items() if v is not None}
    values.update(dict(args.settings))
    return request.with_values(values)


def _user_images(args, request: PlanRequest) -> tuple | None:
    """(x, y, name) for model files: the first --num-images of --data, or a sample of --dataset's test split."""
    if args.data:
        x, y = load_npz(args.data)
        count = args.num_images or len(x)
        return x[:count], y[:count], Path(args.data).name
    if args.dataset:
        values = request.values
        x, y = targets.test_split_images(args.dataset, args.data_dir, values["num_images"], values["seed"])
        lo, hi = args.bounds or (0.0, 1.0)
        return x * (hi - lo) + lo, y, args.dataset  # the data set's [0, 1] pixels in the model's input range
    return None


def _jobs(args, paths, request: PlanRequest, images) -> list:
    """Every target as a job (model loaded, images checked, plan resolved), before any is evaluated."""
    prepared, cache = [], {}
    for path in paths:
        if targets.is_model_file(path) or args.data:
            run = None if targets.is_model_file(path) else runs.check_run(path)  # a run, on the user's --data
            epsilon = args.epsilon or run["epsilon"]
            norm = args.norm or (runs.run_norm(run) if run else "linf")
            prepared.append(targets.file_job(targets.model_path(path), images[:2], images[2], request, epsilon,
                                             output=args.output, name=path.stem, norm=norm,
                                             bounds=args.bounds or (0.0, 1.0)))
        else:
            prepared.append(runs.run_job(path, request, cache, epsilon=args.epsilon, data_dir=args.data_dir))
    return prepared


def _estimate(prepared) -> float:
    """Prints the estimated time (first, if over an hour) and each job's, from a forward pass timed now."""
    lines, total = [], 0.0
    for job in prepared:
        seconds, rate = job.estimate_seconds()
        total += seconds
        lines.append(f"estimate: {job.name}: {job.plan.num_images} images, {job.plan.label()}, about "
                     f"{seconds / 60:.1f} min here (forward pass {rate:.0f} img/s measured now; a rough count)")
    if total > 3600:
        print(f"WARNING: this evaluation is estimated at about {total / 3600:.1f} h on this machine; shorten it "
              f"with {SHORTER} (--estimate-only shows the estimate without running)")
    print("\n".join(lines))
    print(f"estimate: about {total / 60:.1f} min in all")
    return total


@_command
def evaluate_main(argv=None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    threads_for_lanes()  # before TensorFlow's first operation
    spread = replicas.replicas(args.strategy)  # before any work
    model_files_only = all(targets.is_model_file(Path(t)) for t in args.targets)
    # Checked against the norm and range, which come after it on the line (a run's norm is its own: checked then).
    if args.epsilon is not None and (args.norm or model_files_only):
        try:
            check_epsilon(args.epsilon, norm=args.norm or "linf", bounds=args.bounds or (0.0, 1.0))
        except ValueError as err:
            parser.error(f"argument --epsilon: {str(err).rstrip('.')}")
    out, paths = Path(args.out), [Path(t) for t in args.targets]
    for path in paths:
        targets.check_target(path)  # every target is usable before any is evaluated
    files = [p for p in paths if targets.is_model_file(p)]
    if files and args.epsilon is None:
        raise ValueError(f"--epsilon is required for a model file ({files[0]}): it has no training ε to default to")
    if files and not (args.data or args.dataset):
        raise ValueError(f"a model file ({files[0]}) needs images: --dataset NAME or --data FILE.npz")
    run_dirs = [p for p in paths if p not in files and not args.data]
    if run_dirs and args.bounds:
        raise ValueError(f"--bounds applies to model files; a training run ({run_dirs[0]}) is evaluated on its own "
                         "inputs, in [0, 1]")
    run_norms = {p: runs.run_norm(runs.check_run(p)) for p in run_dirs}
    other = next((p for p, norm in run_norms.items() if args.norm and norm != args.norm), None)
    if other is not None:
        raise ValueError(f"{other} was trained in {run_norms[other]} and is evaluated in its own norm: drop --norm "
                         f"{args.norm} (to attack it in another, evaluate its model file: {other / runs.MODEL} "
                         f"--norm {args.norm} --epsilon E --dataset NAME)")
    request = _request(args, bool(files) or any(norm != "linf" for norm in run_norms.values()))
    targets.import_custom_objects(args.custom_objects)
    try:
        prepared = _jobs(args, paths, request, _user_images(args, request))
    except loading.ModelFileError as err:
        raise ValueError(_with_flags(str(err))) from None
    if not (args.show_plan or args.estimate_only) and spread.is_chief:
        check_writable(out)  # before any attack: a read-only --out must not cost a whole evaluation
    if args.show_plan:
        print(json.dumps({"request": request.to_dict(), "targets": {j.name: j.plan.summary() for j in prepared}},
                         indent=2))
        return 0
    _estimate(prepared)
    if args.estimate_only:
        return 0
    with _interrupts() as interrupt:
        try:
            with exclusive(out, "an evaluation") if spread.is_chief else contextlib.nullcontext(), progress_bars():
                found = _run_jobs(prepared, out, spread)
                written = _write_tables(found, out) if spread.is_chief else []
        except BaseException as err:
            if not (isinstance(err, KeyboardInterrupt) or interrupt.seen):
                raise
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return 130
    if not spread.is_chief:
        print(f"worker {spread.worker} of {spread.workers}: done; the chief (worker 0) writes the results")
        return 0
    print("\n".join(Path(p).read_text() for p in written if str(p).endswith(".md")))
    print(f"Tables: {', '.join(str(p) for p in written)}")
    return 0


def _run_jobs(prepared, out: Path, spread: replicas.Replicas) -> list:
    """Every job's record, each attack spread over `spread`. Across machines the chief tells the other workers
    which jobs it has finished, so that all attack the rest in step; the others evaluate and write nothing."""
    if spread.is_chief:
        if spread.workers > 1:
            spread.from_chief([read_record(job.record_path(out), job.key) is not None for job in prepared])
        return [jobs.run(job, out, print, spread) for job in prepared]
    for job, finished in zip(prepared, spread.from_chief(None), strict=True):
        if not finished:
            evaluate(job.model, job.x, job.y, job.plan, progress=print, replicas=spread)
    return []


# The library's advice, in the command's words.
FLAG_HINTS = {"choose its logits output": "choose its logits output with --output NAME",
              "as bounds=(lo, hi)": "with --bounds LO,HI",
              "import it first": "import it first with --custom-objects FILE.py",
              "point data_dir or": "point --data-dir or", "or data_dir at": "or --data-dir at"}


def _with_flags(message: str) -> str:
    for library, command in FLAG_HINTS.items():
        message = message.replace(library, command)
    return message


def _write_tables(found: list, out: Path) -> list:
    """Table 1 for training runs, the one-row-per-model table for model files, results.csv/json for all."""
    written = []
    trained = [r for r in found if r["kind"] == "run"]
    if trained:
        written += report.write_tables(trained, out).values()
    models = [r for r in found if r["kind"] == "model"]
    if models:
        written += results.write_model_table(models, out).values()
        written.append(results.write_robustbench(models, out))
    return written + list(results.write_results(found, out).values())


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
    throughput = reproduce.measured_throughput(suite, budget, specs)
    seconds = reproduce.estimate_cost(suite, budget, specs, throughput)
    for dataset, cost in seconds.items():
        rates = ", ".join(f"{a or 'default network'} {r:.0f} img/s" for (d, a), r in throughput.items() if d == dataset)
        print(f"estimate: {dataset}: {sum(s.dataset == dataset for s in specs)} runs, about {cost / 3600:.1f} h "
              f"here (forward pass measured now: {rates}; a rough count of passes)")
    if args.estimate_only:
        return 0
    reproduce.run_suite(suite, budget, datasets, args.runs, args.results, args.data_dir, Path(args.suite).stem)
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
