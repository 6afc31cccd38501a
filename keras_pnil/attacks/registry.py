"""One entry per attack: its function, the settings it takes, what it costs and how it is described.

Every registered function is called the same way, `attack(model, x, y,
epsilon, *, norm, bounds, eot_samples, batch_size, seed, **its settings)`, and returns the
adversarial images as a NumPy array. An entry declares its settings as
`Setting`s (the function keyword each sets, its default and check, and the flat
budget key that suite files use for it), so the evaluation plan, the command's
`--set ATTACK.FIELD=VALUE`, validation and the cost model all derive from this
table: adding an attack is one module and one `register` call here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_pnil.attacks.apgd import NORMS_BUILT as APGD_NORMS
from keras_pnil.attacks.apgd import apgd, apgd_targeted
from keras_pnil.attacks.autoattack import NORMS_BUILT as AUTOATTACK_NORMS
from keras_pnil.attacks.autoattack import autoattack, autoattack_stages, stage_names, version_for
from keras_pnil.attacks.fab import NORMS_BUILT as FAB_NORMS
from keras_pnil.attacks.fab import fab_targeted
from keras_pnil.attacks.pgd import NORMS_BUILT as PGD_NORMS
from keras_pnil.attacks.pgd import pgd
from keras_pnil.attacks.spsa import NORMS_BUILT as SPSA_NORMS
from keras_pnil.attacks.spsa import spsa
from keras_pnil.attacks.square import NORMS_BUILT as SQUARE_NORMS
from keras_pnil.attacks.square import square
from keras_pnil.threat import DEFAULT_BOUNDS
from keras_pnil.validation import check_count, check_positive

# A backward pass costs about two forward passes; costs below count forward-pass equivalents.
GRADIENT_COST = 3


def _count(name: str, value) -> int:
    return check_count(name, value)


def _even(name: str, value) -> int:
    value = check_count(name, value, minimum=2)
    if value % 2:
        raise ValueError(f"{name} must be even (SPSA mirrors its perturbations); got {value}.")
    return value


def _positive(name: str, value) -> float:
    return check_positive(name, value)


def _optional_positive(name: str, value) -> float | None:
    return None if value is None else check_positive(name, value)


@dataclass(frozen=True)
class Setting:
    """One setting of an attack.

    Attributes:
        keyword: The attack function's keyword it sets.
        default: Its value when neither a preset nor the user sets it (the attack's reference value).
        check: (name, value) → the value, or a ValueError naming the problem.
        legacy: The flat budget key of suite files and older commands (e.g. `pgd_steps`), shared by the
            attacks that read the same number (APGD's steps in APGD-CE, APGD-DLR, APGD-T and AutoAttack).
    """

    keyword: str
    default: Any
    check: Callable[[str, Any], Any] = _count
    legacy: str | None = None


@dataclass(frozen=True)
class AttackSpec:
    """How evaluation runs one attack.

    Attributes:
        name: The name used in `--attacks`, `--set NAME.FIELD=VALUE`, tables and results.
        function: The attack, following the package's calling convention.
        settings: Setting name → `Setting` (its function keyword, default, check, flat key).
        describe: The attack's settings → the words that name its budget.
        cost: (settings, EOT draws) → forward-pass equivalents per attacked image.
        options: Keywords fixed whatever the settings.
        gradient_free: Uses only the model's scores (a witness against gradient masking).
        full_set: Runs on every evaluation image by default (else on a seeded subset of them).
        seeded: Draws random numbers (from its `seed`); FAB-T, which starts at the image, does not.
        images_key: The flat budget key with the size of its subset (unset or None: `spsa_images`).
        eot_key: The flat budget key with its own EOT draws (unset or None: `eot_samples`), so that a
            query-hungry attack can be given fewer draws than PGD.
        fixed_eot: EOT draws whatever the plan says (PGD without EOT: 1).
        follows: Another attack whose settings it takes unless its own are set (PGD without EOT follows PGD).
        norms: The norms it has a version for (its module's `NORMS_BUILT`); any other is an error before any work.
        staged: For an ensemble: `function` returning also, per image, the position of the stage that broke it
            in `stages` (negative: none), so that the masking checks can read what each stage found.
        stages: For an ensemble: (random model?, norm) → the names of its stages, in order (each a registered
            attack's name).
        by_randomness: random model? → keywords the function takes from the plan's judgement of the model
            (an ensemble: its version, so that the stages it runs are the `stages` the plan expects).
    """

    name: str
    function: Callable[..., np.ndarray]
    settings: Mapping[str, Setting]
    describe: Callable[[Mapping], str]
    cost: Callable[[Mapping, int], float]
    options: Mapping = field(default_factory=dict)
    gradient_free: bool = False
    full_set: bool = True
    seeded: bool = True
    images_key: str | None = None
    eot_key: str | None = None
    fixed_eot: int | None = None
    follows: str | None = None
    norms: tuple[str, ...] = ("linf",)
    staged: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
    stages: Callable[[bool, str], list[str]] | None = None
    by_randomness: Callable[[bool], dict] | None = None

    def keywords_for_model(self, random: bool) -> dict:
        """The keywords it takes from the plan's judgement that the model is `random` or not (an ensemble: its
        version), so that it never judges the model again on its own."""
        return {} if self.by_randomness is None else self.by_randomness(random)

    def defaults(self) -> dict:
        """Setting name → default value."""
        return {name: setting.default for name, setting in self.settings.items()}

    def check(self, name: str, value) -> Any:
        """`value` checked for the setting `name`, or a ValueError naming the attack's settings."""
        if name not in self.settings:
            raise ValueError(f"attack {self.name!r} has no setting {name!r}; it has "
                             f"{sorted([*self.settings, 'images', 'eot_samples', 'seed'])}.")
        return self.settings[name].check(f"{self.name}.{name}", value)

    def keywords(self, settings: Mapping) -> dict:
        """The function's keywords for `settings` (setting name → value)."""
        return {**{self.settings[k].keyword: v for k, v in settings.items()}, **self.options}

    def __call__(self, model, x, y, epsilon: float, settings: Mapping, **conventions) -> np.ndarray:
        """Runs the attack with `settings` and the calling conventions (norm, bounds, eot_samples, batch_size,
        seed). `norm` and `bounds` are passed only when they differ from L∞ on [0, 1], so an attack written
        for that threat model alone needs neither keyword."""
        return self.function(model, x, y, epsilon, **self._keywords(settings, conventions))

    def call_staged(self, model, x, y, epsilon: float, settings: Mapping,
                    **conventions) -> tuple[np.ndarray, np.ndarray]:
        """As calling the spec, through `staged`: (the adversarial images, per image its stage's position)."""
        if self.staged is None:
            raise ValueError(f"attack {self.name!r} is not an ensemble: it has no stages to report.")
        return self.staged(model, x, y, epsilon, **self._keywords(settings, conventions))

    def _keywords(self, settings: Mapping, conventions: dict) -> dict:
        if conventions.get("norm") == "linf" and tuple(conventions.get("bounds", DEFAULT_BOUNDS)) == DEFAULT_BOUNDS:
            conventions = {k: v for k, v in conventions.items() if k not in ("norm", "bounds")}
        return {**self.keywords(settings), **conventions}


ATTACKS: dict[str, AttackSpec] = {}


def register(spec: AttackSpec) -> AttackSpec:
    """Adds an attack to the registry (a name can be registered once)."""
    if spec.name in ATTACKS:
        raise ValueError(f"An attack named {spec.name!r} is already registered.")
    ATTACKS[spec.name] = spec
    return spec


def get_attack(name: str) -> AttackSpec:
    """The registered attack named `name`."""
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; expected one of {sorted(ATTACKS)}.")
    return ATTACKS[name]


def check_norm_support(names, norm: str) -> None:
    """An error naming the attacks among `names` that have no version in `norm`, and those that do."""
    missing = [name for name in names if norm not in get_attack(name).norms]
    if missing:
        have = [name for name, spec in ATTACKS.items() if norm in spec.norms]
        raise ValueError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no {norm} version; "
                         f"attacks with one: {', '.join(have)}.")


def _pgd_words(s: Mapping) -> str:
    restarts = s.get("restarts", 1)
    step = f" of {s['step_size']:.4g}" if s.get("step_size") else ""
    return f"PGD {s['steps']} steps{step}" + (f" × {restarts} restarts" if restarts > 1 else "")


def _apgd_cost(s: Mapping, eot: int) -> float:
    return s["steps"] * eot * GRADIENT_COST


_PGD = {"steps": Setting("steps", 50, legacy="pgd_steps"),
        "step_size": Setting("step_size", None, _optional_positive, legacy="pgd_step_size"),
        "restarts": Setting("restarts", 1, legacy="pgd_restarts")}
register(AttackSpec("pgd", pgd, _PGD, _pgd_words, lambda s, eot: s["steps"] * s["restarts"] * eot * GRADIENT_COST,
                    norms=PGD_NORMS))
# One noise draw per step whatever the plan's EOT: shows what EOT adds against a random model.
register(AttackSpec("pgd-no-eot", pgd, _PGD, lambda s: _pgd_words(s) + " (one draw)",
                    lambda s, eot: s["steps"] * s["restarts"] * GRADIENT_COST, fixed_eot=1, follows="pgd",
                    norms=PGD_NORMS))
register(AttackSpec("spsa", spsa, {"steps": Setting("steps", 100, legacy="spsa_steps"),
                                   "samples": Setting("perturbations", 2048, _even, legacy="spsa_samples"),
                                   "learning_rate": Setting("learning_rate", 0.01, _positive,
                                                            legacy="spsa_learning_rate"),
                                   "delta": Setting("delta", 0.01, _positive, legacy="spsa_delta")},
                    lambda s: f"SPSA {s['steps']} steps × {s['samples']} samples",
                    lambda s, eot: s["steps"] * s["samples"] * eot, gradient_free=True, full_set=False,
                    images_key="spsa_images", eot_key="spsa_eot_samples", norms=SPSA_NORMS))
_APGD_STEPS = Setting("steps", 100, legacy="apgd_steps")
_TARGETS = Setting("targets", 9, legacy="target_classes")  # AutoAttack's
for _loss in ("ce", "dlr"):
    register(AttackSpec(f"apgd-{_loss}", apgd, {"steps": _APGD_STEPS}, lambda s: f"APGD {s['steps']} steps",
                        _apgd_cost, options={"loss": _loss}, norms=APGD_NORMS))
register(AttackSpec("apgd-t", apgd_targeted, {"steps": _APGD_STEPS, "targets": _TARGETS},
                    lambda s: f"APGD-T {s['steps']} steps × {s['targets']} targets",
                    lambda s, eot: _apgd_cost(s, eot) * s["targets"], norms=APGD_NORMS))


def _fab_cost(steps: int, targets: int, eot: int) -> float:
    return steps * targets * eot * (GRADIENT_COST + 1)  # a gradient and a check per step


register(AttackSpec("fab-t", fab_targeted, {"steps": Setting("steps", 100, legacy="fab_steps"), "targets": _TARGETS},
                    lambda s: f"FAB-T {s['steps']} steps × {s['targets']} targets",
                    lambda s, eot: _fab_cost(s["steps"], s["targets"], eot), full_set=False, seeded=False,
                    images_key="autoattack_images", eot_key="autoattack_eot_samples", norms=FAB_NORMS))
_QUERIES = Setting("queries", 5000, legacy="square_queries")
register(AttackSpec("square", square, {"queries": _QUERIES}, lambda s: f"Square {s['queries']} queries",
                    lambda s, eot: s["queries"] * eot, gradient_free=True, full_set=False,
                    images_key="square_images", eot_key="square_eot_samples", norms=SQUARE_NORMS))


def _autoattack_words(s: Mapping) -> str:
    return (f"AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square; L1: APGD-CE 5 restarts and APGD-T 5 targets, "
            f"each warmed up at 3ε then 2ε; rand with EOT: APGD-CE, APGD-DLR; "
            f"APGD {s['apgd_steps']} steps, {s['targets']} targets, FAB {s['fab_steps']} steps, "
            f"Square {s['queries']} queries)")


def _autoattack_cost(s: Mapping, eot: int) -> float:
    apgd_cost = _apgd_cost({"steps": s["apgd_steps"]}, eot)
    if eot > 1:  # the rand version, for random models: APGD-CE and APGD-DLR
        return 2 * apgd_cost
    return apgd_cost * (1 + s["targets"]) + _fab_cost(s["fab_steps"], s["targets"], eot) + s["queries"]


register(AttackSpec("autoattack", autoattack, {"apgd_steps": _APGD_STEPS, "targets": _TARGETS,
                                               "fab_steps": Setting("fab_steps", 100, legacy="fab_steps"),
                                               "queries": _QUERIES},
                    _autoattack_words, _autoattack_cost, full_set=False, images_key="autoattack_images",
                    eot_key="autoattack_eot_samples", norms=AUTOATTACK_NORMS, staged=autoattack_stages,
                    stages=lambda random, norm: stage_names(version_for(random), norm),
                    by_randomness=lambda random: {"version": version_for(random)}))
