"""The run directory: what one training run writes, and how it is trained, loaded and evaluated.

A run directory holds `config.json` (the run's configuration), `model.keras`
(a plain Keras model), `history.csv`, TensorBoard `logs/`, the best checkpoint
(`best/`), the backup a killed run resumes from (`backup/`) and, once the
planned epochs ran and the model was saved, `done.json`. Evaluations write
`<name>.json` files elsewhere. Commands and suites go through this module;
it raises `RunError` (and `ValueError` for bad configurations), never exits.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import keras
import numpy as np

from keras_pnil import data as datasets
from keras_pnil import jobs, loading, models, recipe, records
from keras_pnil.augmentation import check_augmentation
from keras_pnil.callbacks import (
    STOP_RULES,
    BestCheckpoint,
    CatastrophicOverfittingMonitor,
    ConvergenceStop,
    PNILStatistics,
)
from keras_pnil.files import atomic_write_json, atomic_write_text, read_json
from keras_pnil.history import read_history
from keras_pnil.layers import DEFAULT_BIAS, LOG_VARIANCE_RANGE, find_pnil
from keras_pnil.methods import METHODS, all_options
from keras_pnil.methods import build as build_method
from keras_pnil.plan import PlanRequest
from keras_pnil.threat import NORMS, get_norm
from keras_pnil.validation import check_choice, check_count, check_epsilon, check_positive, parse_epsilon, parse_radius

log = logging.getLogger("keras_pnil")
CONFIG, MODEL, DONE, HISTORY = "config.json", "model.keras", "done.json", "history.csv"
BACKUP, BEST, LOGS, LR_RANGE_TEST, MONITOR = "backup", "best", "logs", "lr_range_test.csv", "monitor"

# Every option of a training run but the methods' own, with its default (the train command's flags and
# train/*.json keys); each method declares its options in its registration (`keras_pnil.methods`).
RUN_DEFAULTS = {
    "dataset": "mnist", "data_dir": None, "architecture": None, "method": "nfgsm", "pnil": False, "epsilon": None,
    "epochs": 10, "batch_size": 100, "seed": 0, "strategy": "default", "train_size": None, "validation_size": None,
    "fold": None, "lr_schedule": "cyclical", "base_lr": 1e-4, "max_lr": 1e-3, "lr_range_test": False,
    "monitor_images": 200, "monitor_eot": 4, "early_stop": False, "checkpoint": "best", "pnil_lr_multiplier": 1.0,
    "pnil_bias": DEFAULT_BIAS, "patience": None, "min_delta": 0.0,
    # The CIFAR-10 references' recipe (train/cifar10_*.json): augmentation, SGD, Wong et al.'s early stop, WRN size.
    "augment": "none", "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0, "early_stop_rule": "best",
    "depth": 34, "width": 10,
    "norm": "linf",  # the threat model's norm: the training method's ball, and the norm the run is evaluated in
    "mixed_precision": False,  # Keras' mixed_float16 (recipe.precision): for GPUs
}


class _TrainDefaults(Mapping):
    """`RUN_DEFAULTS` and every registered method's option defaults, read from the registry when asked (so a
    method registered after import is in it)."""

    def _all(self) -> dict:
        return {**RUN_DEFAULTS, **{o.key: o.default for o in all_options()}}

    def __getitem__(self, key):
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


TRAIN_DEFAULTS: Mapping = _TrainDefaults()  # every option of a training run, with its default
# "best": restore the weights of the lowest adversarial validation loss (the paper); "last": keep the final
# weights, as Wong et al. do, so that a collapse at the end of training shows in the evaluated model.
CHECKPOINTS = ("best", "last")
_COUNTS = ("epochs", "batch_size", "monitor_images", "monitor_eot", "depth", "width")
_OPTIONAL_COUNTS = ("train_size", "validation_size", "patience")  # patience: epochs (see ConvergenceStop)
_POSITIVE = ("base_lr", "max_lr", "pnil_lr_multiplier")
FOLDS = 10  # the 5×2 protocol


class RunError(Exception):
    """A run directory that cannot be used: not a finished run, unreadable, or made for other data."""


def training_config(options: dict) -> dict:
    """A complete, validated run configuration: `TRAIN_DEFAULTS` updated with `options`.

    ε may be a string such as "8/255"; without one, the data set's (the
    paper's) is used. Raises a ValueError naming the first bad option.
    """
    defaults = dict(TRAIN_DEFAULTS)
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"Unknown training option(s) {sorted(unknown)}; expected some of {sorted(defaults)}.")
    config = {**defaults, **options}
    datasets.check_dataset_name(config["dataset"])
    check_choice("training method", config["method"], METHODS)
    check_choice("strategy", config["strategy"], recipe.STRATEGIES)
    check_choice("learning-rate schedule", config["lr_schedule"], recipe.LR_SCHEDULES)
    check_choice("checkpoint", config["checkpoint"], CHECKPOINTS)
    check_augmentation(config["augment"])
    check_choice("optimizer", config["optimizer"], recipe.OPTIMIZERS)
    check_choice("early-stopping rule", config["early_stop_rule"], STOP_RULES)
    config["architecture"] = config["architecture"] or models.default_architecture(config["dataset"])
    check_choice("architecture", config["architecture"], models.ARCHITECTURES)
    check_choice("norm", config["norm"], NORMS)
    config["epsilon"] = training_epsilon(config["epsilon"], config["norm"], config["dataset"])
    for key in _COUNTS:
        check_count(key, config[key])
    for key in (k for k in _OPTIONAL_COUNTS if config[k] is not None):
        check_count(key, config[key])
    for key in _POSITIVE:
        check_positive(key, config[key])
    for option in all_options():  # every method's, so that a bad value in a shared config file shows at once
        config[option.key] = option.check(option.key, config[option.key])
    check_count("seed", config["seed"], minimum=0)
    if not isinstance(config["mixed_precision"], bool):
        raise ValueError(f"mixed_precision must be true or false; got {config['mixed_precision']!r}.")
    if not (isinstance(config["min_delta"], int | float) and 0 <= config["min_delta"] < 1):
        raise ValueError(f"min_delta (the fraction a new low must lie below the best) must be in [0, 1); "
                         f"got {config['min_delta']!r}.")
    low, high = LOG_VARIANCE_RANGE
    if not (isinstance(config["pnil_bias"], int | float) and low <= config["pnil_bias"] <= high):
        raise ValueError(f"pnil_bias (the PNIL's initial B, a log-variance) must be a number in [{low}, {high}]; "
                         f"got {config['pnil_bias']!r}.")
    if config["fold"] is not None and (check_count("fold", config["fold"], minimum=0) >= FOLDS):
        raise ValueError(f"fold must be one of 0-{FOLDS - 1} (the 5×2 protocol); got {config['fold']!r}.")
    _check_optimizer(config)
    if config["architecture"] == "wide_resnet" and (config["depth"] < 10 or (config["depth"] - 4) % 6):
        raise ValueError(f"depth must be 6n + 4 for a Wide ResNet (28 and 34 are the usual); got {config['depth']}.")
    if config["max_lr"] < config["base_lr"]:
        raise ValueError(f"max_lr must be >= base_lr; got base_lr={config['base_lr']}, max_lr={config['max_lr']}.")
    config["method_options"] = recipe.method_options(config)
    # The method's own checks, and whether it has a version in the norm.
    build_method(config["method"], config["epsilon"], config["norm"], **config["method_options"])
    return config


def training_epsilon(value, norm: str = "linf", dataset: str = "mnist") -> float:
    """A run's ε in its `norm` from '8/255', '0.3' or a number: an L∞ radius in (0, 1), an L2 radius any
    positive number (it may exceed 1); None: the data set's L∞ default (other norms have none).

    Example:
        >>> training_epsilon("2", "l2")
        2.0
    """
    if value is None:
        if norm != "linf":
            raise ValueError(f"epsilon is required with norm {norm}: the data set's default "
                             f"({datasets.DEFAULT_EPSILON[dataset]:.4g}) is an L∞ radius (e.g. epsilon 2.0, "
                             "MNIST's usual L2 radius).")
        return datasets.DEFAULT_EPSILON[dataset]
    return parse_epsilon(value) if norm == "linf" else check_epsilon(parse_radius(value), norm=norm)


def run_norm(config: Mapping) -> str:
    """The norm a run was trained in, and is evaluated in: its configuration's (runs before norms: L∞)."""
    return config.get("norm", "linf")


def _check_optimizer(config: dict) -> None:
    """SGD's momentum in [0, 1) and a weight decay >= 0, which only SGD takes (Adam's runs have none)."""
    momentum, decay = config["momentum"], config["weight_decay"]
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}.")
    if isinstance(decay, bool) or not isinstance(decay, int | float) or decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0; got {decay!r}.")
    lowest = recipe.optimizer_options(config)["base_momentum"]
    if lowest is not None and momentum < lowest:
        raise ValueError(f"momentum must be >= {lowest} under lr_schedule 'cyclic_lr' (PyTorch's CyclicLR cycles "
                         f"it down to {lowest} at the peak rate); got {momentum!r}.")
    if decay and config["optimizer"] != "sgd":
        raise ValueError(f"weight_decay applies to optimizer 'sgd' (PyTorch's coupled L2 decay); got "
                         f"weight_decay={decay} with optimizer {config['optimizer']!r}.")


# What a run directory adds to its configuration (the training images and validation indices it derived, the
# range test's bounds, the method's keywords, which its compared options determine) and where the data lay:
# not part of what was asked for.
_DERIVED = frozenset({"data_dir", "n_train", "validation_indices", "lr_bounds", "method_options"})


def configuration_changes(config: dict, run) -> list[str]:
    """How the configuration `config` (from `training_config`) differs from the one stored in the directory
    `run`, as `key: stored → asked` lines; empty when `run` holds none or the same one.

    Compared: every key but those the run derives itself (`_DERIVED`; and the rate bounds a range test
    chose) and other methods' options. A key the stored configuration lacks (a run made before the key
    existed) counts as its default, the behaviour of the code that made it.

    Example:
        >>> configuration_changes(training_config({"dataset": "mnist", "epochs": 3}), "runs/new")
        []
    """
    path = Path(run) / CONFIG
    if not path.exists():
        return []
    stored, asked = read_json(path), json.loads(json.dumps(config))
    others = {o.key for o in all_options()} - {o.key for o in METHODS[asked["method"]].options}
    skip = _DERIVED | others | ({"base_lr", "max_lr"} if asked.get("lr_range_test") else set())
    changes = []
    for key in sorted(set(asked) | set(stored)):
        old = stored.get(key, TRAIN_DEFAULTS.get(key))
        if key not in skip and old != asked.get(key, TRAIN_DEFAULTS.get(key)):
            changes.append(f"{key}: {old!r} → {asked.get(key)!r}")
    return changes


def check_same_run(config: dict, run) -> None:
    """A `RunError` if the directory `run` holds a run of another configuration: a killed run resumes, and a
    finished one is reused, only under exactly the configuration that made it."""
    changes = configuration_changes(config, run)
    if changes:
        raise RunError(f"{run} holds a run of another configuration ({'; '.join(changes[:4])}"
                       f"{f'; {len(changes) - 4} more' if len(changes) > 4 else ''}): train into a new directory, "
                       "or delete this one to train it again.")


def is_finished(run) -> bool:
    """Whether `run` holds a finished training run (its planned epochs ran and its model was saved)."""
    return (Path(run) / DONE).exists()


def training_indices(config: dict, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Training images and the validation half of the test set (the other half is for evaluation)."""
    rng = np.random.default_rng(config["seed"])
    if config["fold"] is not None:
        fold = datasets.five_by_two_folds(n_train, n_test, seed=config["seed"])[config["fold"]]
        train_idx, val_idx = fold.train, fold.validation
    else:
        train_idx, val_idx = np.arange(n_train), np.sort(rng.permutation(n_test)[: n_test // 2])
    # train_size takes a seeded subset (of the fold's half under fold): reduced budgets.
    train_idx = np.sort(rng.permutation(train_idx)[: config["train_size"] or len(train_idx)])
    return train_idx, val_idx[: config["validation_size"]]


def _stored_lr_bounds(out: Path) -> dict:
    """The range test's bounds from an earlier session of this run, so a resumed run does not redo it."""
    if (out / CONFIG).exists():
        stored = read_json(out / CONFIG)
        if stored.get("lr_bounds") == "range test":
            return {k: stored[k] for k in ("base_lr", "max_lr", "lr_bounds")}
    return {}


def stop_batches(config: dict, x_train, y_train, train_idx) -> list | None:
    """The training images of an early-stopping rule with its own check (`STOP_RULES`), one batch per epoch.

    Wong et al. attack each epoch's first training batch, a uniform draw from their shuffled set; here each
    epoch's batch is drawn from the training images with the run's seed (before augmentation). None for a
    rule that judges the validation check.
    """
    if STOP_RULES[config["early_stop_rule"]].steps is None:
        return None
    rng = np.random.default_rng([config["seed"], 1])
    size = min(config["batch_size"], len(train_idx))
    draws = (np.sort(rng.choice(train_idx, size, replace=False)) for _ in range(config["epochs"]))
    return [(x_train[chosen], y_train[chosen]) for chosen in draws]


def _fit(config: dict, train_ds, val_ds, monitor_data, out: Path, stop_data=None) -> tuple[dict, str | None]:
    """Builds, compiles and fits the configured trainer with resume and checkpoint selection; saves the model.

    Returns the history and why training stopped before its planned epochs (None if it did not).
    """
    steps_per_epoch = int(train_ds.cardinality())
    with recipe.strategy(config["strategy"]).scope():
        if config["lr_range_test"]:
            config.update(_stored_lr_bounds(out))
        if config["lr_range_test"] and "lr_bounds" not in config:
            history, (config["base_lr"], config["max_lr"]) = recipe.range_test_bounds(config, train_ds)
            config["lr_bounds"] = "range test"
            atomic_write_text(out / LR_RANGE_TEST, "lr,loss\n" + "".join(f"{r},{v}\n" for r, v in history))
            log.info(f"LR range test suggests a cyclical rate in [{config['base_lr']:.2e}, {config['max_lr']:.2e}]")
        trainer = recipe.build_trainer(config)
        recipe.compile_trainer(trainer, recipe.learning_rate(config, steps_per_epoch), config["pnil_lr_multiplier"],
                               **recipe.optimizer_options(config))
    atomic_write_json(out / CONFIG, config)
    monitor = CatastrophicOverfittingMonitor(*monitor_data, epsilon=config["epsilon"], norm=config["norm"],
                                             early_stop=config["early_stop"],
                                             eot_samples=config["monitor_eot"], state_dir=out / MONITOR,
                                             rule=STOP_RULES[config["early_stop_rule"]], stop_batches=stop_data)
    layer = find_pnil(trainer)
    convergence = ([ConvergenceStop(config["patience"], out / HISTORY, min_delta=config["min_delta"])]
                   if config["patience"] else [])
    callbacks = [
        monitor,
        *convergence,
        *([PNILStatistics(layer, monitor_data[0])] if layer is not None else []),
        # Two copies: a kill while the latest is being written falls back to the one before.
        keras.callbacks.BackupAndRestore(str(out / BACKUP), double_checkpoint=True),
        keras.callbacks.CSVLogger(str(out / HISTORY), append=True),
        keras.callbacks.TensorBoard(str(out / LOGS)),
        *([BestCheckpoint(out / BEST)] if config["checkpoint"] == "best" else []),
    ]
    # shuffle=False: the data set shuffles itself (Keras would warn that it ignores the flag).
    history = trainer.fit(train_ds, validation_data=val_ds, epochs=config["epochs"], callbacks=callbacks,
                          shuffle=False, verbose=2 if os.environ.get("CI") else 1)
    tmp = out / ".model.tmp.keras"  # Keras insists on the suffix
    trainer.save(tmp)
    os.replace(tmp, out / MODEL)
    if monitor.collapsed_at is not None:
        return history.history, f"stopped at epoch {monitor.collapsed_at} on catastrophic overfitting"
    if convergence and convergence[0].stopped_at is not None:
        return history.history, (f"converged: val_loss not improved (by more than {config['min_delta']:.0%}) for "
                                 f"{config['patience']} epochs, stopped after epoch {convergence[0].stopped_at}")
    return history.history, None


def _worker_directory(out: Path, strategy: str) -> Path:
    """Where this process writes: `out`, or `out/worker-<i>` for worker i > 0 of a multi-worker run.

    Every worker trains the same weights; only the chief's directory is the run (workers sharing a
    file system must not write the same files).
    """
    index = recipe.worker_index() if strategy == "multi_worker" else None
    return out / f"worker-{index}" if index else out


def train_run(config: dict, out, data=None) -> str:
    """Trains the run `config` (from `training_config`) into the directory `out`; returns a summary line.

    A directory holding a killed run resumes from its last finished epoch.
    `data` may pass the loaded data set (`load_dataset`'s value) to skip
    reading it again.
    """
    recipe.strategy(config["strategy"])  # first: a multi-worker strategy must exist before any TensorFlow op
    out = _worker_directory(Path(out), config["strategy"])
    check_same_run(config, out)  # before any work: a resumed run is the run it was
    (x_train, y_train), (x_test, y_test) = data or datasets.load_dataset(config["dataset"], config["data_dir"])
    train_idx, val_idx = training_indices(config, len(x_train), len(x_test))
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config["seed"])
    train_ds = datasets.make_dataset(x_train[train_idx], y_train[train_idx], config["batch_size"], seed=config["seed"],
                                     augment=config["augment"])  # the training set only
    val_ds = datasets.make_dataset(x_test[val_idx], y_test[val_idx], config["batch_size"], shuffle=False)
    config = {**config, "n_train": int(len(train_idx)), "validation_indices": val_idx.tolist()}
    monitor = val_idx[: config["monitor_images"]]
    start = time.time()
    with recipe.precision(config["mixed_precision"]):
        history, stop_reason = _fit(config, train_ds, val_ds, (x_test[monitor], y_test[monitor]), out,
                                    stop_batches(config, x_train, y_train, train_idx))
    finished = len(read_history(out / HISTORY).get("epoch", []))
    if finished < config["epochs"] and stop_reason is None:
        raise RunError(f"{out}: training stopped after {finished} of {config['epochs']} epochs; "
                       "not marked finished (run the command again to resume)")
    last = {k: float(v[-1]) for k, v in history.items()}
    summary = (f"{config['dataset']} {config['method']}{' +PNIL' if config['pnil'] else ''} "
               f"{get_norm(config['norm']).title} ε={config['epsilon']:.4g}: {len(history.get('loss', []))} epochs "
               f"this session in "
               f"{time.time() - start:.0f}s; val clean acc {last.get('val_clean_accuracy', float('nan')):.4f}, "
               f"val adv acc {last.get('val_accuracy', float('nan')):.4f}, "
               f"PGD acc {last.get('pgd_val_accuracy', float('nan')):.4f}; model in {out / MODEL}")
    atomic_write_json(out / DONE, {"summary": summary, "epochs": finished,
                                   "stopped": stop_reason or f"ran the planned {config['epochs']} epochs"})
    return summary


def check_run(run) -> dict:
    """The configuration of a finished run, after checking that its model file is a Keras archive."""
    run = Path(run)
    try:
        config = read_json(run / CONFIG)
    except (OSError, json.JSONDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not valid JSON: {err}"
        raise RunError(f"{run} is not a finished training run: cannot read {CONFIG} ({reason})") from None
    if not (run / MODEL).is_file():
        raise RunError(f"{run} is not a finished training run: it has no {MODEL}")
    _as_run_error(loading.check_model_file, run / MODEL)
    return config


def _as_run_error(load, path):
    """`load(path)`, its ModelFileError raised as the RunError of a run directory."""
    try:
        return load(path)
    except loading.ModelFileError as err:
        raise RunError(str(err)) from None


def load_run(run) -> tuple[dict, keras.Model]:
    """A finished run's configuration and model."""
    run = Path(run)
    config = check_run(run)
    return config, _as_run_error(loading.load_model, run / MODEL)


def evaluation_images(config: dict, data, num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of `num_images` images the run neither trained nor validated on.

    A 5×2 fold is scored on the other half of the training set (the paper's
    protocol); any other run on test images outside its validation half.
    """
    (x_train, y_train), (x_test, y_test) = data
    if config.get("fold") is not None:
        pool = datasets.five_by_two_folds(len(x_train), len(x_test), seed=config["seed"])[config["fold"]].test
        x, y = x_train, y_train
    else:
        pool, x, y = np.setdiff1d(np.arange(len(x_test)), config.get("validation_indices", [])), x_test, y_test
    chosen = np.sort(np.random.default_rng(seed).permutation(pool)[:num_images])
    return x[chosen], y[chosen]


def run_job(run, request: PlanRequest, data_cache: dict, *, epsilon: float | None = None, data_dir=None,
            label: str | None = None) -> jobs.Job:
    """One training run as an evaluation job, on `request`'s number of images it neither trained nor
    validated on (seeded by the request's seed; see `evaluation_images`), at its training ε unless `epsilon`,
    in the norm it was trained in (`run_norm`).

    `label` names the training method in the record (default: the run's method, with `-l2` for a run in
    another norm than L∞, so its row is never read beside the paper's L∞ numbers); `data_cache` keeps each
    data set loaded once.
    """
    run = Path(run)
    config, model = load_run(run)
    dataset = config["dataset"]
    if dataset not in data_cache:
        data_cache[dataset] = datasets.load_dataset(dataset, data_dir)
    x, y = evaluation_images(config, data_cache[dataset], request.values["num_images"], request.values["seed"])
    norm = run_norm(config)
    method = label or (config["method"] + ("" if norm == "linf" else f"-{norm}"))
    about = {"kind": "run", "dataset": dataset, "method": method, "pnil": config["pnil"], "norm": norm,
             "run": str(run), "n_train": config.get("n_train", 1), "n_test": config.get("n_train", 1),
             "fold": config.get("fold") or 0}
    return jobs.prepare(run.name, model, x, y, request, epsilon or config["epsilon"], about, training_budget(config),
                        norm=norm)


def evaluate_run(run, request: PlanRequest, out, data_cache: dict, *, epsilon: float | None = None, data_dir=None,
                 label: str | None = None, stored_only: bool = False,
                 progress: Callable[[str], None] | None = None) -> dict | None:
    """Evaluates one training run (see `run_job`) into `out`; returns its Table 1 record.

    A result stored for exactly the same images, weights, plan and library version is read back
    (how suites resume). With `stored_only`, nothing is attacked: None unless such a result exists.
    """
    job = run_job(run, request, data_cache, epsilon=epsilon, data_dir=data_dir, label=label)
    if stored_only:
        stored = records.read_record(job.record_path(out), job.key)
        return None if stored is None else stored["record"]
    return jobs.run(job, out, progress)


def training_budget(config: dict) -> dict:
    """The part of a run's config that a robustness number's budget states: its epochs and patience."""
    return {"epochs": config.get("epochs"), "patience": config.get("patience")}
