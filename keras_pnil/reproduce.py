"""Reproduction suites: train a grid of runs, evaluate them, and write the tables and figures.

A suite (`keras_pnil/experiments/suites/<name>.json`, or any JSON file) names the data sets, training methods, PNIL
on/off and attacks, and per budget the folds, training flags, attack budget and
figure settings. `run_suite` works through the grid in order and resumes: a
finished run is not trained again (the train command's `done.json`), a killed
one continues from its last epoch (its `BackupAndRestore` backup), and
evaluations and figure data already written for the same budget are read back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_pnil import curves as pgd_curves
from keras_pnil import data, experiments, models, pnil_diagnostics, report, runs, throughput
from keras_pnil.figures import plot_curve, plot_pnil_history, plot_pnil_maps, plot_training_curves
from keras_pnil.files import atomic_write_json, atomic_write_text
from keras_pnil.layers import find_pnil
from keras_pnil.methods import get_method
from keras_pnil.plan import PlanRequest
from keras_pnil.summary import suite_summary

log = logging.getLogger("keras_pnil")
OFFICIAL_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000)}


class SuiteError(ValueError):
    """A suite definition that cannot be run (missing file, unknown budget or data set)."""


def load_suite(name_or_path: str) -> dict:
    """A shipped suite by name (table1, large_eps, mnist_eps03) or a suite file's path."""
    try:
        path = experiments.suite_path(name_or_path)
        suite = json.loads(path.read_text())
    except OSError as err:
        raise SuiteError(f"cannot read suite {name_or_path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise SuiteError(f"suite {path} is not valid JSON: {err}") from None
    suite["path"] = str(path)
    return suite


@dataclass(frozen=True)
class RunSpec:
    """One cell of a suite's grid on one fold and one seed."""

    dataset: str
    method: str
    pnil: bool
    fold: int | None  # None: the whole training set (a suite's "folds": [null])
    seed: int | None = None  # None: the method's configured seed (a suite without "seeds")

    @property
    def name(self) -> str:
        seed = "" if self.seed is None else f"-seed{self.seed}"
        name = f"{self.dataset}-{self.method}{seed}-{'pnil' if self.pnil else 'baseline'}"
        return name if self.fold is None else f"{name}-fold{self.fold}"


def grid(suite: dict, budget: str, datasets=None) -> list[RunSpec]:
    """The suite's runs for `budget`, restricted to `datasets` (default: all of the suite's)."""
    if budget not in suite["budgets"]:
        raise SuiteError(f"suite {suite['path']} has no budget {budget!r}; it has {sorted(suite['budgets'])}.")
    unknown = set(datasets or ()) - set(suite["datasets"])
    if unknown:
        raise SuiteError(f"unknown data set(s) {sorted(unknown)}; suite {suite['path']} has {list(suite['datasets'])}.")
    chosen = [d for d in suite["datasets"] if not datasets or d in datasets]
    # Seeds outermost, so that a suite stopped part-way has every method on its first seeds.
    # A method may restrict PNIL on/off (e.g. the clean or PGD reference trains the baseline only).
    return [RunSpec(d, m, p, f, seed) for seed in suite_seeds(suite, budget) for d in chosen
            for m, options in suite["methods"].items()
            for p in options.get("pnil", suite["pnil"]) for f in suite["budgets"][budget]["folds"]]


def suite_seeds(suite: dict, budget: str) -> list:
    """The training seeds of `budget`: its own "seeds" list, else the suite's, else [None] (each method's own).

    Example:
        >>> suite_seeds({"seeds": [0, 1, 2], "budgets": {"quick": {"seeds": [0]}}}, "quick")
        [0]
    """
    seeds = suite["budgets"][budget].get("seeds", suite.get("seeds", [None]))
    if not seeds or any(s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise SuiteError(f"suite {suite['path']}: \"seeds\" must be distinct non-negative integers, got {seeds!r}")
    return list(seeds)


def _method_settings(suite: dict, spec: RunSpec) -> tuple[dict, dict]:
    """The method's training configuration (a shipped name or a path) and the suite's options for it."""
    method = {k: v for k, v in suite["methods"][spec.method].items() if k != "pnil"}
    name = method.pop("config").format(dataset=spec.dataset)
    try:
        return json.loads(experiments.train_config_path(name).read_text()), method
    except OSError as err:
        raise SuiteError(f"cannot read training configuration {name}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise SuiteError(f"training configuration {name} is not valid JSON: {err}") from None


def suite_attacks(suite: dict, budget: str) -> tuple:
    """The attacks of `budget`: its own "attacks" list, else the suite's."""
    return tuple(suite["budgets"][budget].get("attacks", suite["attacks"]))


def suite_request(suite: dict, budget: str) -> PlanRequest:
    """The evaluation plan request of `budget`: the paper's preset with the budget's "evaluate" values."""
    return PlanRequest.from_preset("paper", suite_attacks(suite, budget)).with_values(
        suite["budgets"][budget]["evaluate"])


def train_config(suite: dict, budget: str, spec: RunSpec, data_dir=None) -> dict:
    """One run's validated training configuration: its train/*.json file, then the suite's options."""
    defaults, method = _method_settings(suite, spec)
    options = {**defaults, **suite["datasets"][spec.dataset], **method, **suite["budgets"][budget]["train"],
               "pnil": spec.pnil, "fold": spec.fold, "data_dir": data_dir}
    if spec.seed is not None:
        if "seed" in method:
            raise SuiteError(f"suite {suite['path']}: method {spec.method!r} sets a seed and the suite has \"seeds\"; "
                             "remove one of them")
        options["seed"] = spec.seed
    return runs.training_config(options)


# ---------------------------------------------------------------- cost estimate
def _training_units(options: dict, n_train: int) -> float:
    """Forward-pass equivalents (a backward pass counts two) of one training run: per image, its method's
    declared cost (an unregistered method is an error, never priced as another)."""
    per_image = get_method(options.get("method", runs.TRAIN_DEFAULTS["method"])).training_cost(options)
    images = options.get("train_size", n_train)
    monitor = options.get("monitor_images", 200) * 3 * 10 * (1 + options.get("monitor_eot", 4))
    return options.get("epochs", 10) * (images * per_image + options.get("validation_size", 5000) * 5 + monitor)


def _figure_units(figures: dict, methods: int) -> float:
    """Figures 4 and 5: EOT curves of the PNIL models, ε sweeps of all (with EOT for PNIL)."""
    per_pgd = figures["images"] * figures.get("pgd_steps", 0) * 3
    eot_curves = methods * per_pgd * sum(figures.get("eot_samples", []))
    sweeps = methods * per_pgd * len(figures.get("epsilon_multiples", [])) * (1 + figures.get("eot", 1))
    return eot_curves + sweeps


def forward_throughput(dataset: str, architecture: str | None = None, batch_size: int = 1000) -> float:
    """Images per second of a forward pass of the network (default: the data set's) with a PNIL, measured here."""
    model = models.for_dataset(dataset, pnil=True, architecture=architecture)
    return throughput.forward_throughput(model, data.IMAGE_SHAPES[dataset], batch_size=batch_size)


def measured_throughput(suite: dict, budget: str, specs) -> dict:
    """Forward-pass images/s of each (data set, architecture) the runs of `specs` train, measured here once each
    at the runs' batch size (a small network is several times faster per image in batches of 100 than of 1,000).

    Example:
        >>> measured_throughput(suite, "full", specs)  # doctest: +SKIP
        {('mnist', 'wong_mnist'): 27430.3}
    """
    rates = {}
    for spec in specs:
        config = train_config(suite, budget, spec)
        key = (spec.dataset, config["architecture"])
        if key not in rates:
            rates[key] = forward_throughput(spec.dataset, config["architecture"], config["batch_size"])
    return rates


def estimate_cost(suite: dict, budget: str, specs: list[RunSpec], throughput: dict) -> dict:
    """Estimated seconds per data set, from pass counts and the forward throughput of each run's network
    (`measured_throughput`: keyed by data set and architecture)."""
    settings, seconds = suite["budgets"][budget], {}
    for spec in specs:
        rate = throughput[(spec.dataset, train_config(suite, budget, spec)["architecture"])]
        config, method = _method_settings(suite, spec)
        n_train = OFFICIAL_SIZES[spec.dataset][0] // (1 if spec.fold is None else 2)  # a fold trains on half
        units = _training_units({**config, **method, **settings["train"]}, n_train)
        request = suite_request(suite, budget)
        plan = request.resolve(epsilon=0.1, random=spec.pnil, num_images=request.values["num_images"])
        units += plan.cost_units()
        seconds[spec.dataset] = seconds.get(spec.dataset, 0.0) + units / rate
    for dataset in seconds:
        slowest = min(r for (d, _), r in throughput.items() if d == dataset)
        seconds[dataset] += _figure_units(settings["figures"], len(suite["methods"])) / slowest
    return seconds


# ---------------------------------------------------------------- figures
class FigureCache:
    """Figure data in `<runs>/figures.json`, written atomically, so a resumed suite skips finished curves."""

    def __init__(self, path: Path, settings: dict, compute: bool = True):
        # Keyed by what the cached curves depend on: the training curves are drawn from the histories.
        self.path, self.settings = path, {k: v for k, v in settings.items() if k != "training_curves"}
        self.compute = compute  # False: only what is cached (None for the rest)
        stored = json.loads(path.read_text()) if path.exists() else {}
        self.values = stored.get("values", {}) if stored.get("settings") == self.settings else {}

    def get(self, key: str, compute):
        if key not in self.values and not self.compute:
            return None
        if key not in self.values:
            self.values[key] = compute()
            atomic_write_json(self.path, {"settings": self.settings, "values": self.values})
        return self.values[key]


def _label(spec: RunSpec) -> str:
    return f"{spec.method.upper()}{' + PNIL' if spec.pnil else ''}"


def _run_curves(spec: RunSpec, model, x, y, epsilon: float, settings: dict, cache: FigureCache) -> dict:
    """One model's figure data: its ε sweep (Figure 5) and, with a PNIL, its EOT curve (Figure 4)."""
    curves = {}
    if "epsilon_multiples" in settings:
        eot = settings.get("eot", 1) if spec.pnil else 1
        curves["sweep"] = cache.get(f"sweep/{spec.name}", lambda: pgd_curves.epsilon_sweep(
            model, x, y, [m * epsilon for m in settings["epsilon_multiples"]], settings["pgd_steps"], eot))
    if "eot_samples" in settings and find_pnil(model) is not None:
        curves["eot"] = cache.get(f"eot/{spec.name}", lambda: pgd_curves.eot_curve(
            model, x, y, epsilon, settings["eot_samples"], settings["pgd_steps"]))
    return curves


def _plot_dataset(dataset: str, epsilon: float, curves: dict, histories: dict, settings: dict, results_dir: Path):
    """The data set's Figure 4, Figure 5 and training curves, as far as there is data for them."""
    steps, paths = settings.get("pgd_steps"), []
    eot = {label: c["eot"] for label, c in curves.items() if "eot" in c}
    sweeps = {label: c["sweep"] for label, c in curves.items() if "sweep" in c}
    if eot:
        paths.append(plot_curve(settings["eot_samples"], eot, results_dir / f"fig4_eot_{dataset}.png",
                                "EOT samples", f"{dataset}: PGD-{steps} at ε={epsilon:.4g}", log_x=True))
    if sweeps:
        paths.append(plot_curve([m * epsilon for m in settings["epsilon_multiples"]], sweeps,
                                results_dir / f"fig5_epsilon_{dataset}.png", "ε",
                                f"{dataset}: PGD-{steps} (EOT {settings.get('eot', 1)} for PNIL)"))
    if settings.get("training_curves"):
        paths.append(plot_training_curves(histories, results_dir / f"training_{dataset}.png",
                                          f"{dataset}, ε={epsilon:.4g}: per-epoch accuracy"))
        sigma = plot_pnil_history(histories, results_dir / f"pnil_sigma_{dataset}.png",
                                  f"{dataset}, ε={epsilon:.4g}: PNIL noise per epoch")
        paths += [sigma] if sigma else []
    return paths


def _figures(suite, budget, specs, runs_dir: Path, results_dir: Path, data_cache: dict, compute: bool = True) -> dict:
    """Figures from the first fold's models, and how much structure each PNIL learned (`compute=False`:
    Figures 4 and 5 only from curves computed before)."""
    settings = suite["budgets"][budget]["figures"]
    cache = FigureCache(runs_dir / "figures.json", settings, compute)
    first_fold = suite["budgets"][budget]["folds"][0]
    structure, paths = {}, []
    for dataset in dict.fromkeys(s.dataset for s in specs):
        chosen = [s for s in specs if s.dataset == dataset and s.fold == first_fold]
        if not chosen:  # a partial report before any of the data set's first-fold runs finished
            continue
        curves = {}
        for spec in chosen:
            config, model = runs.load_run(runs_dir / spec.name)
            x, y = runs.evaluation_images(config, data_cache[dataset], settings["images"], seed=1)
            curves[_label(spec)] = {k: v for k, v in _run_curves(spec, model, x, y, config["epsilon"], settings,
                                                                 cache).items() if v is not None}
            layer = find_pnil(model)
            if layer is not None:
                structure[spec.name] = pnil_diagnostics.pnil_structure(layer, x)
                paths.append(plot_pnil_maps(layer, x[0], results_dir / f"fig1_pnil_{dataset}_{spec.method}.png",
                                            title=f"{spec.name}: learned PNIL"))
        histories = {_label(s): runs_dir / s.name / runs.HISTORY for s in chosen}
        paths += _plot_dataset(dataset, config["epsilon"], curves, histories, settings, results_dir)
    return {"structure": structure, "paths": paths, "settings": settings}


# ---------------------------------------------------------------- the suite
def _timed(timings: dict, key: str, fn):
    start = time.time()
    value = fn()
    timings[key] = timings.get(key, 0.0) + time.time() - start
    return value


def _stored_records(suite: dict, budget: str, specs, runs_dir: Path, data_dir=None) -> tuple[list, list]:
    """The runs of `specs` finished and evaluated for `budget` so far, and their records (nothing is computed)."""
    request, cache = suite_request(suite, budget), {}
    for spec in specs:  # a report of the suite's runs only: one the suite no longer asks for is an error
        runs.check_same_run(train_config(suite, budget, spec, data_dir), runs_dir / spec.name)
    done = [(spec, runs.evaluate_run(runs_dir / spec.name, request, runs_dir / "evaluation", cache,
                                     data_dir=data_dir, stored_only=True, label=spec.method))
            for spec in specs if runs.is_finished(runs_dir / spec.name)]
    done = [(spec, record) for spec, record in done if record is not None]
    return [spec for spec, _ in done], [record for _, record in done]


def run_suite(suite: dict, budget: str, datasets=None, runs_root="runs/reproduce", results_root="docs/results",
              data_dir=None, suite_name: str = "table1", report_only: bool = False) -> Path:
    """Trains, evaluates and reports the suite's grid; returns the summary's path. Safe to rerun.

    With `report_only`, trains and attacks nothing: the tables, figures and summary are those of the runs
    finished and evaluated so far (Figures 4 and 5 as far as computed before), marked partial, while the
    suite itself may still be running elsewhere.
    """
    specs = grid(suite, budget, datasets)
    if report_only:
        return _report(suite, budget, specs, Path(runs_root) / suite_name / budget,
                       Path(results_root) / suite_name / budget, data_dir)
    runs_dir, results_dir = Path(runs_root) / suite_name / budget, Path(results_root) / suite_name / budget
    for path in (runs_dir, results_dir):
        path.mkdir(parents=True, exist_ok=True)
    configs = {spec.name: train_config(suite, budget, spec, data_dir) for spec in specs}
    for spec in specs:  # before any work: a finished run is reused only if the suite still asks for it
        runs.check_same_run(configs[spec.name], runs_dir / spec.name)
    timings_path = runs_dir / "timings.json"
    timings = _read_timings(timings_path)
    data_cache, records = {}, []
    for i, spec in enumerate(specs, 1):
        log.info(f"### [{i}/{len(specs)}] {spec.name}")
        if spec.dataset not in data_cache:
            data_cache[spec.dataset] = data.load_dataset(spec.dataset, data_dir)
        keras.backend.clear_session()
        run = runs_dir / spec.name
        if runs.is_finished(run):
            log.info(f"{run} holds a finished run: not trained again")
        else:
            config = configs[spec.name]
            _timed(timings, f"train/{spec.name}",
                   lambda: log.info(runs.train_run(config, run, data_cache[spec.dataset])))
        atomic_write_json(timings_path, timings)  # kept if the evaluation is killed
        records.append(_timed(timings, f"evaluate/{spec.name}", lambda: runs.evaluate_run(
            runs_dir / spec.name, suite_request(suite, budget), runs_dir / "evaluation", data_cache,
            data_dir=data_dir, label=spec.method, progress=log.info)))
        atomic_write_json(timings_path, timings)
    figures = _timed(timings, "figures", lambda: _figures(suite, budget, specs, runs_dir, results_dir, data_cache))
    atomic_write_json(timings_path, timings)
    return _write_summary(suite, budget, specs, records, figures, timings, runs_dir, results_dir)


def _report(suite: dict, budget: str, specs, runs_dir: Path, results_dir: Path, data_dir) -> Path:
    """The summary of the runs finished so far (see `run_suite`'s `report_only`)."""
    done, records = _stored_records(suite, budget, specs, runs_dir, data_dir)
    if not done:
        raise SuiteError(f"no run of suite {suite['path']} has been trained and evaluated for budget {budget!r} "
                         f"under {runs_dir} yet")
    data_cache = {d: data.load_dataset(d, data_dir) for d in dict.fromkeys(s.dataset for s in done)}
    figures = _figures(suite, budget, done, runs_dir, results_dir, data_cache, compute=False)
    return _write_summary(suite, budget, done, records, figures, _read_timings(runs_dir / "timings.json"),
                          runs_dir, results_dir, len(specs))


def _read_timings(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_summary(suite, budget, specs, records, figures, timings, runs_dir: Path, results_dir: Path,
                   planned: int | None = None) -> Path:
    tables = report.write_tables(records, results_dir)
    histories = {s.name: runs_dir / s.name / runs.HISTORY for s in specs}
    summary = suite_summary(suite, budget, records, figures, timings, tables, specs, histories, planned)
    path = results_dir / "summary.md"
    atomic_write_text(path, summary)
    log.info(summary)
    return path
