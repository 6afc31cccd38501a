"""The evaluation plan: every number an evaluation uses, decided once.

A `PlanRequest` is what was asked for: a preset (`paper`, `quick`,
`autoattack`), the attacks, and overrides (`"pgd.steps": 20`, or a suite
file's flat `pgd_steps`). `PlanRequest.resolve` turns it, with the threat
model (norm, ε, input range: one `ThreatModel`), what probing the model
showed (random or not) and the number of images, into a `Plan`: per
attack its image indices, settings, EOT draws and seed, plus the masking
checks'. The plan is the only source of the printed budget, the cost
estimate, the run itself, results.csv/json and every table, so none of them
can disagree. A plan is labelled with its reference protocol (the paper's or
AutoAttack's) only when every field equals the reference's; otherwise the
label names what differs (the paper's protocol is L∞; AutoAttack's budget is
claimed only in a norm whose official composition runs here, L∞ and L2).

Example:
    >>> request = PlanRequest.from_preset("quick").with_values({"pgd.steps": 10})
    >>> plan = request.resolve(epsilon=0.1, random=True, num_images=100)
    >>> plan.attack("pgd").settings["steps"], plan.attack("pgd").eot_samples
    (10, 4)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from keras_pnil.attacks.autoattack import OFFICIAL_NORMS
from keras_pnil.attacks.common import attack_batch_size
from keras_pnil.attacks.eot import DEFAULT_EOT_SAMPLES
from keras_pnil.attacks.registry import ATTACKS, GRADIENT_COST, check_norm_support, get_attack
from keras_pnil.inputs import check_attack_names
from keras_pnil.threat import DEFAULT_BOUNDS, ThreatModel, threat_model
from keras_pnil.validation import check_count

# Settings of the whole evaluation (not of one attack), with their defaults.
GLOBALS = {"num_images": 1000, "eot_samples": DEFAULT_EOT_SAMPLES, "accuracy_draws": 10, "seed": 0}
# Settings of the gradient-masking checks: how many of the images every attack saw they use (None: all
# of them), and Square's queries as the gradient-free witness when Square is not among the attacks.
CHECKS = {"enabled": True, "images": None, "square_queries": None}
# Per attack, besides its own settings: its images (a count; None: all, or `spsa_images` for subset
# attacks), its EOT draws on random models (None: `eot_samples`) and its seed (None: the plan's).
COMMON = ("images", "eot_samples", "seed")

# Presets in suite files' flat keys (`--budget`). The paper's protocol (Section 4): PGD-50 and SPSA
# 100 × 2048 on 1000 images, EOT 100, on 5000 images; the other attacks at AutoAttack's values.
PRESETS: dict[str, dict] = {
    "paper": {"reference": "paper", "attacks": ("pgd", "spsa"),
              "values": {"num_images": 5000, "eot_samples": 100, "accuracy_draws": 10, "spsa_images": 1000}},
    # Sized for a 2-core CPU: a labelled reduction of the paper's protocol.
    "quick": {"reference": "paper", "attacks": ("pgd", "spsa"),
              "values": {"num_images": 500, "pgd_steps": 20, "spsa_steps": 10, "spsa_samples": 64,
                         "spsa_images": 100, "apgd_steps": 20, "square_queries": 300, "eot_samples": 4,
                         "accuracy_draws": 5}},
    # AutoAttack's own budget (Croce & Hein): standard on deterministic models, rand (EOT 20) on random ones.
    "autoattack": {"reference": "autoattack", "attacks": ("autoattack",),
                   "values": {"num_images": 1000, "eot_samples": 20, "accuracy_draws": 10,
                              "autoattack_images": 1000, "checks.images": 200, "checks.square_queries": 1000}},
}
# How a plan equal to a reference is labelled, and how one that differs names it.
LABELS = {"paper": "paper protocol", "autoattack": "AutoAttack's budget"}
REFERENCE_NAMES = {"paper": "the paper's protocol", "autoattack": "AutoAttack's budget"}
# The norms each reference protocol is defined in: the paper's is L∞; AutoAttack's where its composition is official.
REFERENCE_NORMS = {"paper": ("linf",), "autoattack": OFFICIAL_NORMS}


def _check_global(name: str, value) -> Any:
    if name == "seed":
        return check_count(name, value, minimum=0)
    return check_count(name, value)


def _check_checks(name: str, value) -> Any:
    if name == "enabled":
        if not isinstance(value, bool):
            raise ValueError(f"checks.enabled must be true or false; got {value!r}.")
        return value
    return None if value is None else check_count(f"checks.{name}", value)


def _flat_keys() -> dict[str, list[tuple[str, str]]]:
    """Flat budget key (suite files, older commands) → the (attack, setting) pairs it sets."""
    keys: dict[str, list[tuple[str, str]]] = {}
    for spec in ATTACKS.values():
        for name, setting in spec.settings.items():
            if setting.legacy and not spec.follows:  # a follower takes the flat key through the attack it follows
                keys.setdefault(setting.legacy, []).append((spec.name, name))
        if spec.images_key:
            keys.setdefault(spec.images_key, []).append((spec.name, "images"))
        if spec.eot_key:
            keys.setdefault(spec.eot_key, []).append((spec.name, "eot_samples"))
    return keys


@dataclass(frozen=True)
class PlanRequest:
    """What an evaluation was asked to do, before the model and the images are known.

    Attributes:
        preset: The preset it started from.
        attacks: The attacks to run, in order.
        values: The whole evaluation's settings (`GLOBALS`).
        settings: Attack name → setting → value, for every registered attack (None: its default).
        checks: The masking checks' settings (`CHECKS`).
    """

    preset: str
    attacks: tuple[str, ...]
    values: Mapping[str, Any]
    settings: Mapping[str, Mapping[str, Any]]
    checks: Mapping[str, Any]

    @classmethod
    def from_preset(cls, preset: str, attacks: Iterable[str] | None = None) -> PlanRequest:
        """The request of a preset, with its own attacks unless `attacks` are given.

        Example:
            >>> PlanRequest.from_preset("quick", ["pgd"]).attacks
            ('pgd',)
        """
        if preset not in PRESETS:
            raise ValueError(f"Unknown budget {preset!r}; expected one of {sorted(PRESETS)}.")
        entry = PRESETS[preset]
        # An attack that follows another (PGD without EOT follows PGD) takes its settings unless set itself.
        settings = {name: {**(dict.fromkeys(spec.settings) if spec.follows else spec.defaults()),
                           **dict.fromkeys(COMMON)} for name, spec in ATTACKS.items()}
        base = cls(preset, tuple(entry["attacks"]), dict(GLOBALS), settings, dict(CHECKS))
        request = base.with_values(entry["values"])
        return request if attacks is None else request.with_attacks(attacks)

    def with_attacks(self, attacks: Iterable[str]) -> PlanRequest:
        """The same request running `attacks` (a name, comma-separated names, or an iterable of them)."""
        return replace(self, attacks=check_attack_names(attacks))

    def with_values(self, values: Mapping[str, Any]) -> PlanRequest:
        """The request with `values` set: `"ATTACK.SETTING"` (`"pgd.steps"`), `"checks.NAME"`, a global
        (`"num_images"`, `"eot_samples"`, `"accuracy_draws"`, `"seed"`), or a suite file's flat key
        (`"pgd_steps"`, which may set several attacks). Each value is checked; an unknown key is an error.
        """
        glob, settings, checks = dict(self.values), {k: dict(v) for k, v in self.settings.items()}, dict(self.checks)
        flat = _flat_keys()
        for key, value in values.items():
            if key in GLOBALS:
                glob[key] = _check_global(key, value)
            elif key in flat:
                for attack, name in flat[key]:
                    settings[attack][name] = _check_setting(attack, name, value)
            elif key.startswith("checks."):
                name = key.split(".", 1)[1]
                if name not in CHECKS:
                    raise ValueError(f"the checks have no setting {name!r}; they have {sorted(CHECKS)}.")
                checks[name] = _check_checks(name, value)
            elif "." in key:
                attack, name = key.split(".", 1)
                get_attack(attack)
                settings[attack][name] = _check_setting(attack, name, value)
            else:
                raise ValueError(f"unknown plan setting {key!r}; expected ATTACK.SETTING (e.g. pgd.steps, "
                                 f"spsa.images), checks.SETTING, or one of {sorted(GLOBALS)}.")
        return replace(self, values=glob, settings=settings, checks=checks)

    def to_dict(self) -> dict:
        """A JSON-ready dict (only the attacks that run and the checks' witnesses keep their settings)."""
        kept = dict.fromkeys([*self.attacks, "pgd", "square"])
        return {"preset": self.preset, "attacks": list(self.attacks), **self.values,
                "settings": {a: dict(self.settings[a]) for a in kept}, "checks": dict(self.checks)}

    @classmethod
    def from_dict(cls, stored: Mapping) -> PlanRequest:
        """The request `to_dict` wrote (a plan file), checked as if typed by the user."""
        stored = dict(stored.get("request", stored))  # a resolved plan's file holds its request
        request = cls.from_preset(stored.get("preset", "paper"), stored.get("attacks"))
        values = {k: stored[k] for k in GLOBALS if k in stored}
        for attack, settings in (stored.get("settings") or {}).items():
            get_attack(attack)
            values.update({f"{attack}.{k}": v for k, v in settings.items()})
        values.update({f"checks.{k}": v for k, v in (stored.get("checks") or {}).items()})
        return request.with_values(values)

    def resolve(self, *, epsilon: float, random: bool, num_images: int, training: Mapping | None = None,
                norm: str = "linf", bounds=DEFAULT_BOUNDS) -> Plan:
        """The plan for a model that is `random` or not, on `num_images` images, in the ε-ball of `norm` inside
        the input range `bounds`.

        Subsets are nested prefixes of one seeded permutation of the images, so
        the smallest is seen by every attack. A deterministic model gets one EOT
        draw and one accuracy draw everywhere. An attack without a version in
        `norm` is an error naming those that have one.
        """
        threat = threat_model(norm, epsilon, bounds)
        check_norm_support(self.attacks, threat.norm.name)
        return self._resolve(threat, random, num_images, training)

    def _resolve(self, threat: ThreatModel, random: bool, num_images: int, training: Mapping | None) -> Plan:
        n = check_count("number of images", num_images)
        seed = self.values["seed"]
        order = np.random.default_rng(seed).permutation(n)
        attacks = tuple(self._attack_plan(name, order, random, seed) for name in self.attacks)
        common = _common(attacks, n)
        draws = self.values["accuracy_draws"] if random else 1
        checks = (self._checks_plan(order, common, random, seed, attacks, threat.norm.name)
                  if self.checks["enabled"] else None)
        training = {k: v for k, v in (training or {}).items() if v is not None}
        return Plan(self, threat, n, random, draws, seed, attacks, common, checks, training)

    def _attack_plan(self, name: str, order: np.ndarray, random: bool, seed: int) -> AttackPlan:
        spec, chosen = get_attack(name), self.settings[name]
        count = chosen["images"] or (len(order) if spec.full_set else self.settings["spsa"]["images"] or len(order))
        eot = self._eot(name, random)
        followed = self.settings[spec.follows] if spec.follows else {}
        own = {k: followed[k] if spec.follows and chosen[k] is None else chosen[k] for k in spec.settings}
        return AttackPlan(name, own, tuple(np.sort(order[:min(count, len(order))]).tolist()), eot,
                          seed if chosen["seed"] is None else chosen["seed"], random)

    def _checks_plan(self, order, common: tuple, random: bool, seed: int, attacks: tuple, norm: str) -> ChecksPlan:
        count = min(self.checks["images"] or len(common), len(common))
        members = set(common)
        chosen = tuple(np.sort([i for i in order if i in members][:count]).tolist())
        square = self.settings["square"]
        queries = self.checks["square_queries"] or square["queries"]
        eot = self._eot("square", random)
        pgd = self.settings["pgd"]
        # An ensemble with a gradient-free stage after its gradient stages (AutoAttack's standard version:
        # Square) is its own witness, as in AutoAttack's own check; else Square witnesses against the gradient
        # attacks: run when it is not an attack already, some gradient attack is there to be compared with,
        # and Square has a version in the norm.
        names = [a.name for a in attacks]
        stage_witness = next((n for n in names if _gradient_free_stage(n, random, norm)), None)
        witness = (stage_witness is None and "square" not in names
                   and any(not get_attack(n).gradient_free for n in names) and norm in get_attack("square").norms)
        # The large-ε check's gradient attack: PGD, or APGD-CE in a norm PGD has no version in (L1).
        attack = "pgd" if norm in get_attack("pgd").norms else "apgd-ce"
        return ChecksPlan(chosen, pgd["steps"], pgd["step_size"], self._eot("pgd", random), queries, eot, seed,
                          witness, attack, stage_witness)

    def _eot(self, name: str, random: bool) -> int:
        """The EOT draws of the attack `name`: its own, else the plan's, on a random model; one otherwise."""
        spec = get_attack(name)
        if spec.fixed_eot:
            return spec.fixed_eot
        return (self.settings[name]["eot_samples"] or self.values["eot_samples"]) if random else 1


def _gradient_free_stage(name: str, random: bool, norm: str) -> bool:
    """Whether the attack `name` is an ensemble whose last stage is gradient-free (a witness of its own)."""
    spec = get_attack(name)
    stages = spec.stages(random, norm) if spec.stages else []
    return bool(stages) and get_attack(stages[-1]).gradient_free and any(
        not get_attack(stage).gradient_free for stage in stages[:-1])


def _check_setting(attack: str, name: str, value) -> Any:
    if name in COMMON:
        return None if value is None else check_count(f"{attack}.{name}", value, minimum=0 if name == "seed" else 1)
    return get_attack(attack).check(name, value)


def _common(attacks: tuple, n: int) -> tuple:
    """The images every attack ran on (all of them when no attack ran)."""
    common = set(range(n))
    for attack in attacks:
        common &= set(attack.images)
    return tuple(sorted(common))


@dataclass(frozen=True)
class AttackPlan:
    """One attack as it runs: its settings, the indices of its images, its EOT draws, its seed, and whether the
    plan judged the model random (the one judgement: an ensemble runs the version for it)."""

    name: str
    settings: Mapping[str, Any]
    images: tuple[int, ...]
    eot_samples: int
    seed: int
    random: bool

    @property
    def spec(self):
        return get_attack(self.name)

    def describe(self) -> str:
        """Its budget in words, e.g. `PGD 50 steps`."""
        return self.spec.describe(self.settings)

    def cost(self) -> float:
        """Forward-pass equivalents of running it."""
        return len(self.images) * self.spec.cost(self.settings, self.eot_samples)

    def run(self, model, x, y, threat: ThreatModel, staged: bool = False):
        """The adversarial images of `x[self.images]` (x, y: all evaluation images) in `threat`'s ball; with
        `staged` (an ensemble), the pair (images, per image the position of the stage that broke it)."""
        idx = np.asarray(self.images, dtype=int)
        call = self.spec.call_staged if staged else self.spec
        return call(model, x[idx], y[idx], threat.epsilon, self.settings, eot_samples=self.eot_samples,
                    seed=self.seed, norm=threat.norm.name, bounds=threat.bounds,
                    batch_size=attack_batch_size(np.shape(x)[1:], self.eot_samples),
                    **self.spec.keywords_for_model(self.random))


@dataclass(frozen=True)
class ChecksPlan:
    """The gradient-masking checks: their images, PGD's steps and EOT, and Square as the witness."""

    images: tuple[int, ...]
    pgd_steps: int
    pgd_step_size: float | None
    eot_samples: int
    square_queries: int
    square_eot_samples: int
    seed: int
    square_witness: bool  # Square runs here, as a gradient-free witness against the gradient attacks
    attack: str = "pgd"  # the gradient attack of the large-ε check (APGD-CE where PGD has no version in the norm)
    stage_witness: str | None = None  # an ensemble whose last, gradient-free stage is the witness (AutoAttack)

    def cost(self) -> float:
        pgd = self.pgd_steps * self.eot_samples * GRADIENT_COST * 3  # large-ε PGD, then steps and EOT doubled
        return len(self.images) * (pgd + (self.square_queries * self.square_eot_samples if self.square_witness else 0))


@dataclass(frozen=True)
class Plan:
    """An evaluation as it will run (see the module's docstring). Built by `PlanRequest.resolve`."""

    request: PlanRequest
    threat: ThreatModel  # the norm, ε (in the units of the model's inputs) and the input range
    num_images: int
    random: bool
    accuracy_draws: int
    seed: int
    attacks: tuple[AttackPlan, ...]
    common_images: tuple[int, ...]  # the images every attack ran on: where Min is taken
    checks: ChecksPlan | None
    training: Mapping[str, int] = field(default_factory=dict)  # the model's training budget, when known

    @property
    def epsilon(self) -> float:
        return self.threat.epsilon

    def attack(self, name: str) -> AttackPlan:
        """The plan of the attack `name`."""
        for attack in self.attacks:
            if attack.name == name:
                return attack
        raise ValueError(f"the plan has no attack {name!r}; it has {[a.name for a in self.attacks]}.")

    @property
    def reference(self) -> str:
        return PRESETS[self.request.preset]["reference"]

    def differences(self) -> list[tuple[str, Any, Any]]:
        """(field, ours, the reference's) for every field that differs from the reference protocol."""
        ran = [a.name for a in self.attacks]
        expected = PRESETS[self.reference]["attacks"]
        # Attacks beyond the reference's are compared with their own reference values (AutoAttack's).
        reference = PlanRequest.from_preset(self.reference, [*expected, *(a for a in ran if a not in expected)])
        reference = reference._resolve(self.threat, self.random, PRESETS[self.reference]["values"]["num_images"],
                                       None)
        ours, theirs = _fields(self), _fields(reference)
        norms = REFERENCE_NORMS[self.reference]
        norm = [] if self.threat.norm.name in norms else [("norm", self.threat.norm.name, " or ".join(norms))]
        missing = [(name, "not run", "run") for name in expected if name not in ran]
        return norm + missing + [(k, ours[k], v) for k, v in theirs.items() if k in ours and ours[k] != v]

    def label(self) -> str:
        """`paper protocol` / `AutoAttack's budget` when every field equals it; else what differs."""
        diffs = self.differences()
        if not diffs:
            return LABELS[self.reference] + (" (rand: EOT on a random model)" if self.random else "")
        name = REFERENCE_NAMES[self.reference]
        reduced = any(_smaller(ours, theirs) for _, ours, theirs in diffs)
        words = ", ".join(f"{k} {_word(ours)} (reference {_word(theirs)})" for k, ours, theirs in diffs[:6])
        more = f", and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        return f"{'REDUCED budget' if reduced else 'a different budget'} (not {name}: {words}{more})"

    def describe(self) -> str:
        """One line naming the label, ε, images, each attack's budget, EOT draws and the training budget."""
        parts = [f"{self.label()}: {self.threat.describe()}, {self.num_images} images"]
        for attack in self.attacks:
            words = attack.describe()
            if len(attack.images) != self.num_images:
                words += f" on {len(attack.images)} of them"
            words += f" (EOT {attack.eot_samples})" if self.random else ""
            parts.append(words)
        if self.checks is not None and self.checks.square_witness:
            parts.append(f"Square {self.checks.square_queries} queries on {len(self.checks.images)} images "
                         "(masking witness)")
        if self.checks is not None and self.checks.stage_witness:
            parts.append(f"{self.checks.stage_witness}'s last stage as the masking witness")
        parts.append(f"Min on the {len(self.common_images)} images every attack saw")
        parts.append(f"random model: accuracy over {self.accuracy_draws} draws" if self.random
                     else "deterministic model: no EOT, one draw")
        return ", ".join(parts) + self._training()

    def _training(self) -> str:
        epochs, patience = self.training.get("epochs"), self.training.get("patience")
        if epochs is None:
            return ""
        if patience is None:
            return f", {epochs} training epochs"
        return f", trained to convergence: at most {epochs} epochs, stopped after {patience} without a new best"

    def cost_units(self) -> float:
        """Forward-pass equivalents (a backward pass counts two) of the whole evaluation, checks included.

        A rough count: restarts and ensembles are counted in full, though they run only on the images
        still standing.
        """
        accuracy = (self.num_images + sum(len(a.images) for a in self.attacks)) * self.accuracy_draws
        checks = self.checks.cost() if self.checks else 0
        return accuracy + sum(a.cost() for a in self.attacks) + checks

    def to_dict(self) -> dict:
        """The plan as JSON-ready data (its request, and every resolved number)."""
        return {"request": self.request.to_dict(), "epsilon": self.epsilon, "norm": self.threat.norm.name,
                "bounds": list(self.threat.bounds), "num_images": self.num_images,
                "random": self.random, "accuracy_draws": self.accuracy_draws, "seed": self.seed,
                "attacks": [asdict(a) | {"settings": dict(a.settings), "images": list(a.images)}
                            for a in self.attacks],
                "common_images": list(self.common_images),
                "checks": None if self.checks is None else asdict(self.checks) | {"images": list(self.checks.images)},
                "training": dict(self.training), "label": self.label()}

    def summary(self) -> dict:
        """The plan without its image indices (for `--show-plan`)."""
        shown = self.to_dict()
        for attack in shown["attacks"]:
            attack["images"] = len(attack["images"])
        shown["common_images"] = len(shown["common_images"])
        if shown["checks"]:
            shown["checks"]["images"] = len(shown["checks"]["images"])
        return shown

    def fingerprint(self) -> str:
        """A hash of every number of the plan: results are reused only for an equal fingerprint."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _fields(plan: Plan) -> dict:
    """The plan's numbers that a reference protocol fixes, keyed `attack.setting` (EOT only if random)."""
    fields = {"images": plan.num_images}
    if plan.random:
        fields["accuracy draws"] = plan.accuracy_draws
    for attack in plan.attacks:
        fields.update({f"{attack.name}.{k}": v for k, v in attack.settings.items()})
        full = attack.spec.full_set and len(attack.images) == plan.num_images
        fields[f"{attack.name}.images"] = "all" if full else len(attack.images)
        if plan.random:
            fields[f"{attack.name}.eot_samples"] = attack.eot_samples
    return fields


def _smaller(ours, theirs) -> bool:
    if ours == "not run" or theirs == "all":
        return True
    return isinstance(ours, int | float) and isinstance(theirs, int | float) and ours < theirs


def _word(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
