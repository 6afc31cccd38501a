"""One entry per attack: its function, the budget keys it reads, what it costs and how it is described.

Every registered function is called the same way, `attack(model, x, y,
epsilon, *, eot_samples, batch_size, seed, **its budget)`, and returns the
adversarial images as a NumPy array. Evaluation, reports, cost estimates and
the commands read this table, so adding an attack is one module and one
`register` call here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from keras_pnil.attacks.apgd import apgd, apgd_targeted
from keras_pnil.attacks.autoattack import autoattack
from keras_pnil.attacks.fab import fab_targeted
from keras_pnil.attacks.pgd import pgd
from keras_pnil.attacks.spsa import spsa
from keras_pnil.attacks.square import square

# A backward pass costs about two forward passes; costs below count forward-pass equivalents.
GRADIENT_COST = 3


@dataclass(frozen=True)
class AttackSpec:
    """How evaluation runs one attack.

    Attributes:
        name: The name used in `--attacks`, tables and results.
        function: The attack, following the package's calling convention.
        budget_keys: Budget field → the function's keyword it sets.
        describe: Budget → the words that name this attack's budget.
        cost: (budget, EOT draws) → forward-pass equivalents per attacked image.
        options: Keywords fixed whatever the budget.
        gradient_free: Uses only the model's scores (a witness against gradient masking).
        full_set: Runs on every evaluation image (else on a seeded subset of them).
        seeded: Draws random numbers (from its `seed`); FAB-T, which starts at the image, does not.
        images_key: The budget field with the size of its subset (unset or None: `spsa_images`).
        eot_key: The budget field with its own EOT draws (unset or None: `eot_samples`), so that a
            query-hungry attack can be given fewer draws than PGD.
    """

    name: str
    function: Callable[..., np.ndarray]
    budget_keys: Mapping[str, str]
    describe: Callable[[Mapping], str]
    cost: Callable[[Mapping, int], float]
    options: Mapping = field(default_factory=dict)
    gradient_free: bool = False
    full_set: bool = True
    seeded: bool = True
    images_key: str | None = None
    eot_key: str | None = None

    def subset_size(self, budget: Mapping) -> int:
        """How many of the budget's `num_images` evaluation images it attacks."""
        if self.full_set:
            return budget["num_images"]
        return min(budget.get(self.images_key or "spsa_images") or budget["spsa_images"], budget["num_images"])

    def eot_for(self, budget: Mapping) -> int | None:
        """Its EOT draws under `budget` (one that has been resolved for the model: see `evaluation.resolve_eot`)."""
        if "eot_samples" in self.options:
            return self.options["eot_samples"]
        return (budget.get(self.eot_key) if self.eot_key else None) or budget.get("eot_samples")

    def options_for(self, budget: Mapping) -> dict:
        """The function's keywords under `budget` (EOT draws included)."""
        chosen = {keyword: budget[key] for key, keyword in self.budget_keys.items() if key in budget}
        return {**chosen, **self.options, "eot_samples": self.eot_for(budget)}

    def __call__(self, model, x, y, epsilon: float, budget: Mapping, **overrides) -> np.ndarray:
        return self.function(model, x, y, epsilon, **{**self.options_for(budget), **overrides})


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


def _pgd_words(b: Mapping) -> str:
    restarts = b.get("pgd_restarts", 1)
    return f"PGD {b['pgd_steps']} steps" + (f" × {restarts} restarts" if restarts > 1 else "")


def _apgd_cost(b: Mapping, eot: int) -> float:
    return b["apgd_steps"] * eot * GRADIENT_COST


_PGD_KEYS = {"pgd_steps": "steps", "pgd_step_size": "step_size", "pgd_restarts": "restarts"}
register(AttackSpec("pgd", pgd, _PGD_KEYS, _pgd_words,
                    lambda b, eot: b["pgd_steps"] * b.get("pgd_restarts", 1) * eot * GRADIENT_COST))
# One noise draw per step whatever the budget's EOT: shows what EOT adds against a random model.
register(AttackSpec("pgd-no-eot", pgd, _PGD_KEYS, lambda b: _pgd_words(b) + " (one draw)",
                    lambda b, eot: b["pgd_steps"] * b.get("pgd_restarts", 1) * GRADIENT_COST,
                    options={"eot_samples": 1}))
register(AttackSpec("spsa", spsa, {"spsa_steps": "steps", "spsa_samples": "perturbations",
                                   "spsa_learning_rate": "learning_rate", "spsa_delta": "delta"},
                    lambda b: f"SPSA {b['spsa_steps']} steps × {b['spsa_samples']} samples",
                    lambda b, eot: b["spsa_steps"] * b["spsa_samples"] * eot, gradient_free=True, full_set=False,
                    eot_key="spsa_eot_samples"))
for _loss in ("ce", "dlr"):
    register(AttackSpec(f"apgd-{_loss}", apgd, {"apgd_steps": "steps"},
                        lambda b: f"APGD {b['apgd_steps']} steps", _apgd_cost, options={"loss": _loss}))
register(AttackSpec("apgd-t", apgd_targeted, {"apgd_steps": "steps", "target_classes": "targets"},
                    lambda b: f"APGD-T {b['apgd_steps']} steps × {b['target_classes']} targets",
                    lambda b, eot: _apgd_cost(b, eot) * b["target_classes"]))


def _fab_cost(b: Mapping, eot: int) -> float:
    return b["fab_steps"] * b["target_classes"] * eot * (GRADIENT_COST + 1)  # a gradient and a check per step


register(AttackSpec("fab-t", fab_targeted, {"fab_steps": "steps", "target_classes": "targets"},
                    lambda b: f"FAB-T {b['fab_steps']} steps × {b['target_classes']} targets",
                    _fab_cost, full_set=False, seeded=False, images_key="autoattack_images",
                    eot_key="autoattack_eot_samples"))
register(AttackSpec("square", square, {"square_queries": "queries"},
                    lambda b: f"Square {b['square_queries']} queries",
                    lambda b, eot: b["square_queries"] * eot, gradient_free=True, full_set=False,
                    images_key="square_images", eot_key="square_eot_samples"))


def _autoattack_words(b: Mapping) -> str:
    return (f"AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square; rand with EOT: APGD-CE, APGD-DLR; "
            f"APGD {b['apgd_steps']} steps, {b['target_classes']} targets, FAB {b['fab_steps']} steps, "
            f"Square {b['square_queries']} queries)")


def _autoattack_cost(b: Mapping, eot: int) -> float:
    if eot > 1:  # the rand version, for random models: APGD-CE and APGD-DLR
        return 2 * _apgd_cost(b, eot)
    return _apgd_cost(b, eot) * (1 + b["target_classes"]) + _fab_cost(b, eot) + b["square_queries"]


register(AttackSpec("autoattack", autoattack, {"apgd_steps": "steps", "square_queries": "queries",
                                               "target_classes": "targets", "fab_steps": "fab_steps"},
                    _autoattack_words, _autoattack_cost, full_set=False, images_key="autoattack_images",
                    eot_key="autoattack_eot_samples"))
