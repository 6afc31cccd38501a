"""An AutoAttack-style ensemble (Croce and Hein, 2020) for Keras models, EOT-aware, composed per norm.

As the official code composes it (`autoattack.py`, `set_version`): `standard`
runs APGD-CE, APGD-T, FAB-T and Square in every norm; in L∞ and L2 APGD-CE
once and APGD-T with 9 targets; in L1 APGD-CE with 5 restarts and APGD-T with
5 targets, both with APGD-L1's larger-ε warm-up (`use_largereps`: 3ε, 2ε,
then ε, see `keras_pnil.attacks.apgd.l1_warmup_schedule`), FAB-T with 9 and
Square in L1 (`keras_pnil.attacks.square`); Square's windows shrink on the
schedule of a 10,000-query run whatever its queries, as the official ensemble
calls it (`resc_schedule=False`). Every norm's standard version is the
official one (`OFFICIAL_NORMS`). `rand` runs APGD-CE and APGD-DLR with EOT
in any norm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from keras_pnil.attacks.apgd import apgd, apgd_targeted, l1_warmup_schedule
from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    TARGET_CLASSES,
    check_attack_args,
    classified_right,
    inputs_checked,
)
from keras_pnil.attacks.eot import EOT
from keras_pnil.attacks.fab import fab_targeted
from keras_pnil.attacks.square import SCHEDULE_QUERIES, square
from keras_pnil.threat import DEFAULT_BOUNDS
from keras_pnil.validation import check_choice

VERSIONS = ("standard", "rand")
NORMS_BUILT = ("linf", "l2", "l1")
# The norms whose standard composition here is the official one.
OFFICIAL_NORMS = ("linf", "l2", "l1")
L1_RESTARTS, L1_TARGETS = 5, 5  # the official L1 standard version's APGD-CE restarts and APGD-T targets


@dataclass
class AutoAttackReport:
    """What the ensemble did: accuracy after each stage and, per image, the stage that broke it."""

    version: str
    eot_samples: int
    clean: float
    after: dict = field(default_factory=dict)  # stage name → robust accuracy after it
    seconds: dict = field(default_factory=dict)  # stage name → wall-clock seconds it took
    robust_accuracy: float = float("nan")
    broken_by: list = field(default_factory=list)  # stage name, "clean", or None if it survived


def version_for(random: bool) -> str:
    """AutoAttack's version for a model that is random or not: `rand` (EOT, no FAB-T or Square), else `standard`."""
    return "rand" if random else "standard"


def _stages(version: str, norm: str, steps: int, queries: int, targets: int, fab_steps: int) -> dict:
    if version == "rand":
        return {"apgd-ce": (apgd, {"steps": steps, "loss": "ce"}),
                "apgd-dlr": (apgd, {"steps": steps, "loss": "dlr"})}
    l1 = norm == "l1"  # more APGD-CE restarts, fewer APGD-T targets, both with the larger-ε warm-up
    return {"apgd-ce": (apgd, {"steps": steps, "loss": "ce", "restarts": L1_RESTARTS if l1 else 1, "warmup": l1}),
            "apgd-t": (apgd_targeted, {"steps": steps, "targets": min(targets, L1_TARGETS) if l1 else targets,
                                       "warmup": l1}),
            "fab-t": (fab_targeted, {"steps": fab_steps, "targets": targets}),
            "square": (square, {"queries": queries, "schedule_queries": SCHEDULE_QUERIES})}


def stage_names(version: str, norm: str) -> list[str]:
    """The stages the ensemble runs in `version` and `norm`, in order."""
    return list(_stages(version, norm, 1, 1, 1, 1))


def run_autoattack(model, x, y, epsilon: float, *, version: str | None = None, steps: int = 100,
                   queries: int = 5000, targets: int = TARGET_CLASSES, fab_steps: int = 100, norm: str = "linf",
                   bounds=DEFAULT_BOUNDS, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   seed: int | None = 0) -> tuple[np.ndarray, AutoAttackReport]:
    """The ensemble with its per-stage report; `autoattack` returns only the images.

    `standard`, AutoAttack's version for deterministic models, runs APGD-CE,
    APGD-T and FAB-T (`targets` target classes each) and Square (`queries`)
    in turn, each on the images the previous ones left classified right;
    `rand`, the default for random models (see `probe`), runs APGD-CE and
    APGD-DLR with EOT. In L1 the standard version is the official L1 one (see
    the module's docstring: `steps` must then be at least 3, for the
    warm-up). An image counts as right when the EOT prediction names its label.

    Returns:
        `(x_adv, report)`: per image the first input that broke it, else the
        last attempt; and an `AutoAttackReport`.
    """
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds,
                                     attack="autoattack", norms=NORMS_BUILT)
    model_fn = EOT(model, eot_samples, images=x)
    version = version or version_for(model_fn.random)
    check_choice("AutoAttack version", version, VERSIONS)
    if version == "standard" and threat.norm.name == "l1":
        l1_warmup_schedule(steps)  # enough steps for the warm-up, checked before any stage runs
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    x_adv, right = x.copy(), classified_right(model_fn, x, y, batch_size)
    broken_by = np.where(right, None, "clean").astype(object)
    report = AutoAttackReport(version, model_fn.samples, float(right.mean()))
    for name, (attack, options) in _stages(version, threat.norm.name, steps, queries, targets, fab_steps).items():
        idx, started = np.flatnonzero(right), time.perf_counter()
        if len(idx):
            with inputs_checked():  # checked above, once for every stage
                x_adv[idx] = attack(model, x[idx], y[idx], threat.epsilon, norm=threat.norm.name,
                                    bounds=threat.bounds, eot_samples=model_fn.samples, batch_size=batch_size,
                                    seed=seed, **options)
            broken = idx[~classified_right(model_fn, x_adv[idx], y[idx], batch_size)]
            broken_by[broken], right[broken] = name, False
        report.after[name] = float(right.mean())
        report.seconds[name] = time.perf_counter() - started
    report.robust_accuracy, report.broken_by = float(right.mean()), broken_by.tolist()
    return x_adv, report


def autoattack(model, x, y, epsilon: float, *, version: str | None = None, steps: int = 100, queries: int = 5000,
               targets: int = TARGET_CLASSES, fab_steps: int = 100, norm: str = "linf", bounds=DEFAULT_BOUNDS,
               eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               seed: int | None = 0) -> np.ndarray:
    """The AutoAttack-style ensemble as an attack: the adversarial images (see `run_autoattack`)."""
    return run_autoattack(model, x, y, epsilon, version=version, steps=steps, queries=queries, targets=targets,
                          fab_steps=fab_steps, norm=norm, bounds=bounds, eot_samples=eot_samples,
                          batch_size=batch_size, seed=seed)[0]


# `autoattack_stages`' code for an image the model gets wrong unattacked, and for one no stage broke.
MISCLASSIFIED, SURVIVED = -2, -1


def autoattack_stages(model, x, y, epsilon: float, **options) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's images and, per image, the position in `stage_names` of the stage that broke it
    (`SURVIVED` if none did, `MISCLASSIFIED` if it was wrong unattacked): what the masking checks read to
    learn how much the ensemble's gradient-free Square stage found that its gradient stages missed
    (AutoAttack's own `check_square_sr`). Keywords as `run_autoattack`.

    Example:
        >>> x_adv, codes = autoattack_stages(model, x, y, 0.3)
        >>> (codes == stage_names("standard", "linf").index("square")).mean()  # broken by Square only
    """
    x_adv, report = run_autoattack(model, x, y, epsilon, **options)
    order = {name: k for k, name in enumerate(stage_names(report.version, options.get("norm", "linf")))}
    order.update({None: SURVIVED, "clean": MISCLASSIFIED})
    return x_adv, np.array([order[stage] for stage in report.broken_by], np.float64)
