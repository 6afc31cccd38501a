"""One model to evaluate: its images, ε, what it is, its resolved plan and the key of its result.

Jobs are prepared for every target before any is evaluated (so a bad input
fails before any work, and the cost estimate is the plan's), then run one
by one: a result stored under the same key is read back, an interrupted one
resumes at its next attack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from keras_pnil import evaluation, records
from keras_pnil.inputs import check_inputs
from keras_pnil.layers import find_pnil
from keras_pnil.plan import Plan, PlanRequest
from keras_pnil.replicas import kept_noise
from keras_pnil.threat import DEFAULT_BOUNDS
from keras_pnil.throughput import forward_throughput

# Seconds of forward passes behind the evaluate command's printed estimate: a rough count, so a quarter second
# (after two warm-up passes) rather than the suites' full second.
ESTIMATE_SECONDS = 0.25


@dataclass
class Job:
    """A model, its checked images and labels, and the plan resolved for it.

    Attributes:
        name: The file stem its record is stored under (`<out>/<name>.json`).
        model: The Keras model (logits out).
        x, y: The evaluation images and labels, checked.
        plan: The resolved `Plan`.
        about: What the model is, for the tables: dataset, method, pnil, run, n_train, n_test, fold, kind
            ("run": a training run of a suite's grid; "model": a model file).
        key: The hash of what is evaluated (`records.evaluation_key`).
    """

    name: str
    model: keras.Model
    x: np.ndarray
    y: np.ndarray
    plan: Plan
    about: dict
    notes: list = field(default_factory=list)  # what probing the model showed, reported when it runs
    key: str = field(init=False)

    def __post_init__(self):
        self.key = records.evaluation_key(self.model, self.x, self.y, self.plan)

    def record_path(self, out) -> Path:
        return Path(out) / f"{self.name}.json"

    def estimate_seconds(self) -> tuple[float, float]:
        """(seconds, forward images per second measured now) of this job on this machine: a rough count."""
        with kept_noise(self.model):  # the number of timed passes must not move a random model's draws
            rate = forward_throughput(self.model, self.x.shape[1:], seconds=ESTIMATE_SECONDS)
        return self.plan.cost_units() / rate, rate


def prepare(name: str, model, x, y, request: PlanRequest, epsilon: float, about: dict,
            training: dict | None = None, *, norm: str = "linf", bounds=DEFAULT_BOUNDS) -> Job:
    """Checks the images against the model (within `bounds`), probes it and resolves the plan in the ε-ball
    of `norm`: a `Job` ready to run or estimate.

    Nothing is reported yet (an estimate may come first): what probing showed is kept in `notes`.
    """
    x, y = check_inputs(model, x, y, what=f"{about.get('dataset', 'the')} images", bounds=bounds)
    notes = []
    random = evaluation.is_random(model, x, notes.append, bounds)
    plan = request.resolve(epsilon=epsilon, random=random, num_images=len(x), training=training, norm=norm,
                           bounds=bounds)
    return Job(name, model, x, y, plan, dict(about), notes)


def _architecture(model) -> str:
    """What the model is, as far as its file says: its class, name and parameter count."""
    return f"{type(model).__name__} {model.name!r} ({model.count_params():,} parameters)"


def run(job: Job, out, progress: Callable[[str], None] | None = None, replicas=None) -> dict:
    """The job's record: read back if stored under its key, else evaluated (resuming finished stages; each
    attack spread over `replicas`, a `keras_pnil.replicas.Replicas`, with the same results as one device)
    and written atomically to `<out>/<name>.json`, with the PNIL maps of a PNIL model."""
    report = progress or (lambda message: None)
    path = job.record_path(out)
    stored = records.read_record(path, job.key)
    if stored is not None:
        report(f"== {job.name}: evaluated earlier with the same images, weights, plan and library version "
               f"(key {job.key[:12]}): read back from {path}")
        return stored["record"]
    report(f"== {job.name}: {job.plan.num_images} images of {job.about.get('dataset')}, "
           f"{job.plan.threat.describe()}")
    for note in job.notes:
        report(note)
    store = records.StageStore(Path(out) / f"{job.name}.stages", job.key)
    result = evaluation.evaluate(job.model, job.x, job.y, job.plan, store=store, progress=report, replicas=replicas)
    for check in result.checks:
        report(f"  [{'FLAGGED' if check.flagged else 'ok'}] {check.check}: {check.detail}")
    stored = result.to_dict()
    record = {**job.about, "clean": result.clean, **{k: a.accuracy for k, a in result.attacks.items()},
              "min": result.effective, "worst_case": result.worst_case, "budget": stored["budget"],
              "checks": stored["checks"], "architecture": job.about.get("architecture") or _architecture(job.model),
              "result": stored}
    records.write_record(path, job.key, {"record": record})
    store.clear()  # the record holds every stage now
    layer = find_pnil(job.model)
    if layer is not None:
        from keras_pnil import figures  # matplotlib only when a PNIL map is drawn

        figures.plot_pnil_maps(layer, job.x[0], Path(out) / f"{job.name}_pnil.png", title=f"{job.name}: learned PNIL")
    return record
