"""Robustness of a model: clean accuracy, each attack of an evaluation plan, effective robustness (Min).

An image counts as robust to an attack only if the model classifies it right
both as it is and as the attack left it (the unperturbed image lies in the
ε-ball too), so no attack's accuracy exceeds the clean accuracy on its own
images. Min, the paper's effective robustness, is the lowest attack accuracy
on the images every attack saw, and its clean accuracy is stated on the same
images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from keras_pnil.attacks.eot import first_notice_of_probabilities, probe
from keras_pnil.correctness import per_example_correct
from keras_pnil.inputs import check_attack_names, check_inputs
from keras_pnil.masking import gradient_masking_checks, largest_perturbation
from keras_pnil.plan import Plan, PlanRequest
from keras_pnil.replicas import Replicas, replicas
from keras_pnil.threat import DEFAULT_BOUNDS

log = logging.getLogger("keras_pnil")


@dataclass(frozen=True)
class AttackResult:
    """One attack's accuracy on its own images, beside the clean accuracy on the same images."""

    name: str
    accuracy: float
    clean: float
    n_images: int
    eot_samples: int
    budget: str


@dataclass
class RobustnessResult:
    """What an evaluation measured (fractions), with the plan that measured it.

    Attributes:
        clean: Accuracy on all the plan's images.
        attacks: Attack name → `AttackResult`.
        effective: Min: the lowest attack accuracy on the images every attack saw (`common_images`).
        effective_clean: The clean accuracy on those images (Min never exceeds it).
        worst_case: On those images, the fraction that survive every attack (per image, the worst attack).
        plan: The `Plan` it ran.
        worst_case_per_image: Per common image, its accuracy under the attack that did best on it.
        checks: The gradient-masking checks (`masking.Check`), empty if they did not run.
        largest_perturbation: Attack name → the largest norm (the plan's) of its perturbations (NaN when read
            back from an older record); an attack above ε is an error, never a result.
    """

    clean: float
    attacks: dict[str, AttackResult]
    effective: float
    effective_clean: float
    worst_case: float
    plan: Plan
    worst_case_per_image: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    largest_perturbation: dict = field(default_factory=dict)

    @property
    def common_images(self) -> list[int]:
        return list(self.plan.common_images)

    def accuracy(self, attack: str) -> float:
        """The accuracy under `attack`."""
        return self.attacks[attack].accuracy

    def to_dict(self) -> dict:
        """JSON-ready: the numbers, the resolved plan and its description."""
        return {"clean": self.clean, "attacks": {k: asdict(v) for k, v in self.attacks.items()},
                "effective": self.effective, "effective_clean": self.effective_clean,
                "worst_case": self.worst_case, "worst_case_per_image": list(self.worst_case_per_image),
                "checks": [asdict(c) for c in self.checks], "plan": self.plan.to_dict(),
                "budget": self.plan.describe(), "threat_model": self.plan.threat.to_dict(),
                "largest_perturbation": dict(self.largest_perturbation)}


def robustness(model, x, y, epsilon: float, attacks=("pgd", "spsa"), *, norm: str = "linf", bounds=DEFAULT_BOUNDS,
               budget: str = "paper", plan: PlanRequest | None = None, seed: int | None = None, checks: bool = True,
               strategy: str = "default", progress: Callable[[str], None] | None = None, **values) -> RobustnessResult:
    """Accuracy under each attack, the effective robustness (Min) and the per-image worst case.

    Attacks are names from `keras_pnil.attacks.ATTACKS` (a name, comma-separated
    names, or a list). The plan starts from the preset `budget` ("paper", the
    paper's protocol; "quick"; "autoattack") or from `plan`, and keyword
    `values` override it:
    `**{"pgd.steps": 20}`, a global such as `eot_samples=4`, or a flat key
    such as `pgd_steps=20`. Whether the model is random is judged by calling
    it twice on the same images: a random model is attacked with EOT, a
    deterministic one without. `norm` ("linf", "l2", "l1") and `bounds` (the
    model's input range, e.g. (0, 255)) set the threat model; ε is in the units
    of the model's inputs. Inputs are checked first (finite pixels within
    `bounds`, integer labels of the model's classes, a shape it takes).
    `strategy` "mirrored" spreads every attack over this machine's devices, "multi_worker" over the
    machines of `TF_CONFIG` (each running the same program), with exactly the same results as "default"
    (one device) for the same seed (see `keras_pnil.replicas`).
    `progress` receives one line per stage (default: the `keras_pnil` logger).

    Example:
        >>> result = robustness(model, x_test[:500], y_test[:500], 8 / 255, attacks="pgd", budget="quick")
        >>> result.clean, result.accuracy("pgd"), result.effective, result.plan.describe()
        >>> robustness(model, x_test[:500], y_test[:500], 0.5, "autoattack", norm="l2", budget="autoattack")
    """
    names = check_attack_names(attacks)
    spread = replicas(strategy)
    x, y = check_inputs(model, x, y, bounds=bounds)
    if plan is None:
        plan = PlanRequest.from_preset(budget, names)
    request = plan.with_attacks(names).with_values(
        {**values, **({} if seed is None else {"seed": seed}), **({} if checks else {"checks.enabled": False})})
    resolved = request.resolve(epsilon=epsilon, random=is_random(model, x, progress, bounds), num_images=len(x),
                               norm=norm, bounds=bounds)
    return evaluate(model, x, y, resolved, progress=progress, replicas=spread)


def is_random(model, x, progress: Callable[[str], None] | None = None, bounds=DEFAULT_BOUNDS) -> bool:
    """Whether `model` is random at inference, judged by two calls on the same images; said once in the log."""
    report = progress or log.info
    behaviour = probe(model, x, bounds)
    if behaviour.probabilities and first_notice_of_probabilities(model):
        report("[model] outputs probabilities (rows sum to 1), not logits: attacking their logarithms "
               "(models should output logits)")
    report("[model] random at inference (two calls on the same images differ): attacked with EOT"
           if behaviour.random else "[model] deterministic (two calls on the same images agree): no EOT")
    return behaviour.random


def evaluate(model, x, y, plan: Plan, *, store=None, progress: Callable[[str], None] | None = None,
             replicas: Replicas | None = None) -> RobustnessResult:
    """Runs `plan` on `(x, y)` (checked inputs, `plan.num_images` of them), each attack spread over
    `replicas` (default: one device; the results are the same on any number).

    `store`, if given, keeps each finished stage (`store.load(name)` → the
    per-image accuracies or None; `store.save(name, values)`), so an
    interrupted evaluation resumes at the next attack. Across machines every
    worker skips the stages the chief's `store` holds, and only the chief saves.
    """
    report = progress or log.info
    if len(x) != plan.num_images:
        raise ValueError(f"the plan is for {plan.num_images} images; got {len(x)}.")
    report(f"[plan] {plan.describe()}")
    replicas = replicas or Replicas()
    store = replicas.shared(store)
    if replicas.strategy != "default":
        report(f"[devices] attacks run {replicas.describe()}" + (
            " (one device: as the default strategy)" if replicas.count == 1 else ""))
    draws, random = plan.accuracy_draws, plan.random
    clean = _stage(store, "clean", lambda: per_example_correct(model, x, y, draws, random=random), report)
    robust, largest, stages = {}, {}, {}
    witness = plan.checks.stage_witness if plan.checks is not None else None
    for attack in plan.attacks:
        def run(attack=attack):
            report(f"[{attack.name}] attacking {len(attack.images)} images (EOT {attack.eot_samples}) ...")
            idx = np.asarray(attack.images, dtype=int)
            values = np.full(len(x), np.nan)
            staged = {"staged": True} if attack.name == witness else {}
            x_adv = replicas.run(attack, model, x, y, plan.threat, **staged)
            if attack.name == witness:  # the ensemble's stages, for the masking checks
                x_adv, codes = x_adv
                stages[attack.name] = np.full(len(x), np.nan)
                stages[attack.name][idx] = codes
                if store is not None:  # saved before the attack's own stage: read back with it
                    store.save(f"{attack.name}.stages", stages[attack.name])
            largest[attack.name] = largest_perturbation(plan.threat, x_adv, x[idx], attack.name)  # error above ε
            values[idx] = per_example_correct(model, x_adv, y[idx], draws, random=random)
            return values

        # The unperturbed image is in the ε-ball too: an attack never leaves an image better off.
        robust[attack.name] = np.minimum(_stage(store, attack.name, run, report), clean)
        size = _stage(store, f"{attack.name}.largest", lambda a=attack: np.array([largest.get(a.name, np.nan)]),
                      lambda message: None)
        largest[attack.name] = float(size[0])
        if attack.name == witness and attack.name not in stages:  # the attack was read back: its stages too
            stages[attack.name] = store.load(f"{attack.name}.stages")
            if stages[attack.name] is None:
                raise RuntimeError(f"the stored {attack.name} results have no record of its stages: delete the "
                                   "evaluation's stored stages and run it again.")
        report(f"[{attack.name}] accuracy {np.nanmean(robust[attack.name]):.4f}, largest {plan.threat.norm.title} "
               f"perturbation {largest[attack.name]:.4g} (ε={plan.epsilon:.4g})")
    result = _result(plan, clean, robust)
    result.largest_perturbation = largest
    if plan.checks is not None:
        result.checks = gradient_masking_checks(model, x, y, plan, clean, robust, report, replicas, stages)
    return result


def _stage(store, name: str, compute, report) -> np.ndarray:
    stored = None if store is None else store.load(name)
    if stored is not None:
        report(f"[{name}] finished earlier with the same plan, images and weights: read back")
        return stored
    values = compute()
    if store is not None:
        store.save(name, values)
    return values


def _result(plan: Plan, clean: np.ndarray, robust: dict) -> RobustnessResult:
    attacks = {}
    for attack in plan.attacks:
        idx = np.asarray(attack.images, dtype=int)
        attacks[attack.name] = AttackResult(attack.name, float(robust[attack.name][idx].mean()),
                                            float(clean[idx].mean()), len(idx), attack.eot_samples,
                                            attack.describe())
    common = np.asarray(plan.common_images, dtype=int)
    per_image = np.min([robust[a.name][common] for a in plan.attacks], axis=0) if plan.attacks else clean[common]
    effective = min(float(robust[a.name][common].mean()) for a in plan.attacks) if plan.attacks else \
        float(clean[common].mean())
    return RobustnessResult(float(clean.mean()), attacks, effective, float(clean[common].mean()),
                            float(per_image.mean()), plan, per_image.tolist())
