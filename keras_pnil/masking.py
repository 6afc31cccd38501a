"""Carlini et al.'s sanity checks for gradient masking, run as the evaluation plan's `checks` say."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from keras_pnil.attacks.pgd import pgd
from keras_pnil.attacks.registry import get_attack
from keras_pnil.attacks.square import square
from keras_pnil.correctness import per_example_correct

# Absolute accuracy margins (fractions) behind the checks.
GRADIENT_FREE_MARGIN = 0.05
CONVERGENCE_MARGIN = 0.03
LARGE_EPSILON_CEILING = 0.10
LARGE_EPSILON = 0.5  # half the pixel range: any image can be turned grey


@dataclass(frozen=True)
class Check:
    """One check's outcome: `flagged` is a sign of masking."""

    check: str
    value: float
    flagged: bool
    detail: str


def gradient_masking_checks(model, x, y, plan, clean, robust: dict, progress=None) -> list[Check]:
    """The checks of `plan` (an `evaluation.Plan` whose `checks` is set), each a `Check`.

    1. A gradient-free attack (SPSA, Square; Square is run here as a witness if
       it was not among the attacks) beating the strongest gradient attack (any
       attack that uses gradients, AutoAttack's ensemble included) by more than
       `GRADIENT_FREE_MARGIN` on the images both saw: the gradients mislead the
       gradient attacks.
    2. PGD at ε = 0.5 must reach near-zero accuracy; above
       `LARGE_EPSILON_CEILING` the gradient attack is not working.
    3. Doubling PGD's steps and EOT draws must not lower accuracy by more than
       `CONVERGENCE_MARGIN`; otherwise the reported PGD is not converged.

    `x`, `y` are all the evaluation images, `clean` the model's per-image
    accuracy on them; `robust` maps each attack that ran to its per-image
    accuracy over all of them (NaN where it did not attack). As everywhere, an
    image counts as robust only if it is also classified right unattacked.
    """
    report = progress or (lambda message: None)
    checks, draws, random = plan.checks, plan.accuracy_draws, plan.random
    idx = np.asarray(checks.images, dtype=int)
    xs, ys, right = x[idx], y[idx], clean[idx]
    robust, images = dict(robust), {a.name: np.asarray(a.images, dtype=int) for a in plan.attacks}
    if checks.square_witness:
        report(f"[checks] Square ({checks.square_queries} queries, EOT {checks.square_eot_samples}) on "
               f"{len(idx)} images as a gradient-free witness ...")
        x_square = square(model, xs, ys, plan.epsilon, queries=checks.square_queries,
                          eot_samples=checks.square_eot_samples, seed=checks.seed)
        robust["square"] = np.full(len(x), np.nan)
        robust["square"][idx] = np.minimum(right, per_example_correct(model, x_square, ys, draws, random=random))
        images["square"] = idx
    results = []
    gradient = [name for name in robust if not get_attack(name).gradient_free]
    for name in (n for n in robust if get_attack(n).gradient_free and gradient):
        on = functools.reduce(np.intersect1d, [images[g] for g in gradient], images[name])
        strongest = min(gradient, key=lambda g: np.mean(robust[g][on]))
        gap = float(np.mean(robust[strongest][on])) - float(np.mean(robust[name][on]))
        results.append(Check(f"{name} vs {strongest}", -gap, gap > GRADIENT_FREE_MARGIN,
                             f"{name} accuracy minus {strongest}'s on the same {len(on)} images: {-gap:+.3f}"))
    report(f"[checks] PGD at ε = {LARGE_EPSILON} and with doubled steps/EOT on {len(idx)} images ...")
    large = _pgd_accuracy(model, xs, ys, right, LARGE_EPSILON, checks.pgd_steps, None, checks.eot_samples, draws,
                          random, checks.seed)
    results.append(Check("large-ε PGD", large, large > LARGE_EPSILON_CEILING,
                         f"PGD accuracy at ε={LARGE_EPSILON} is {large:.3f} (should be near 0)"))
    if "pgd" in robust:
        reported = float(np.mean(robust["pgd"][idx]))
        doubled = _pgd_accuracy(model, xs, ys, right, plan.epsilon, 2 * checks.pgd_steps, checks.pgd_step_size,
                                2 * checks.eot_samples if random else 1, draws, random, checks.seed)
        drop = reported - doubled
        results.append(Check("PGD convergence", -drop, drop > CONVERGENCE_MARGIN,
                             f"doubling steps and EOT samples changes PGD accuracy by {-drop:+.3f}"))
    return results


def _pgd_accuracy(model, x, y, clean, epsilon, steps, step_size, eot, draws, random, seed) -> float:
    """PGD's accuracy on `(x, y)`, an image counting only where `clean` (its unattacked accuracy) allows."""
    x_adv = pgd(model, x, y, epsilon, steps=steps, step_size=step_size, eot_samples=eot, seed=seed)
    return float(np.minimum(clean, per_example_correct(model, x_adv, y, draws, random=random)).mean())
