"""Carlini et al.'s sanity checks for gradient masking, run as the evaluation plan's `checks` say, and
AutoAttack's own checks: zero input gradients, NaN/inf in outputs or gradients, the largest perturbation
an attack actually used (an error above ε)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.eot import EOT
from keras_pnil.attacks.registry import get_attack
from keras_pnil.correctness import per_example_correct
from keras_pnil.plan import AttackPlan
from keras_pnil.replicas import Replicas
from keras_pnil.threat import ThreatModel

# Absolute accuracy margins (fractions) behind the checks.
GRADIENT_FREE_MARGIN = 0.05
CONVERGENCE_MARGIN = 0.03
LARGE_EPSILON_CEILING = 0.10
# AutoAttack's own check (`check_square_sr`): its Square stage lowering the robust accuracy its gradient stages
# left by more than 0.2 points is a sign that those stages were misled.
STAGE_WITNESS_MARGIN = 0.002
LARGE_EPSILON = 0.5  # half the input range on every pixel (its L2/L1 norm for those norms): any image turns grey
# A perturbation counts as above ε beyond float32 rounding of the projection.
NORM_TOLERANCE = 1e-4


class PerturbationError(ValueError):
    """An attack returned images outside the threat model (beyond ε, outside the input range, or not finite)."""


def largest_perturbation(threat: ThreatModel, x_adv, x, attack: str) -> float:
    """The largest norm of `x_adv - x` over the images; a `PerturbationError` if it exceeds ε, if any pixel
    leaves the input range, or if any is NaN/inf (AutoAttack's final check, made an error)."""
    x_adv, x = np.asarray(x_adv, np.float64), np.asarray(x, np.float64)
    if not np.isfinite(x_adv).all():
        raise PerturbationError(f"{attack} returned {int((~np.isfinite(x_adv)).sum())} NaN/inf pixels.")
    lo, hi = threat.bounds
    if x_adv.size and (x_adv.min() < lo - 1e-6 * threat.width or x_adv.max() > hi + 1e-6 * threat.width):
        raise PerturbationError(f"{attack} left the input range [{lo:g}, {hi:g}]: pixels in "
                                f"[{x_adv.min():.6g}, {x_adv.max():.6g}].")
    largest = float(threat.norm.numpy_distance(x_adv - x).max()) if len(x) else 0.0
    if largest > threat.epsilon * (1 + NORM_TOLERANCE) + 1e-6 * threat.width:
        raise PerturbationError(f"{attack} used a {threat.norm.title} perturbation of {largest:.6g}, above "
                                f"ε={threat.epsilon:.6g}: its results are not valid for this threat model.")
    return largest


def gradient_health(model, x, y, eot_samples: int) -> list:
    """Two of AutoAttack's checks on the images `x`: all-zero input gradients of the (EOT) cross-entropy
    (a sign of masking), and NaN/inf in the outputs or those gradients."""
    model_fn = EOT(model, eot_samples, images=x)
    xt, labels = tf.constant(np.asarray(x, np.float32)), tf.constant(np.asarray(y, np.int32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        raw = model_fn.draws(xt)
        log_probs = tf.reduce_mean(tf.nn.log_softmax(raw), axis=0)
        loss = -tf.reduce_sum(tf.gather(log_probs, labels, batch_dims=1))
    grad = tape.gradient(loss, xt)
    grad = np.zeros(xt.shape, np.float32) if grad is None else grad.numpy()  # None: no path from the input
    grad = grad.reshape(len(x), -1)
    zero = int(np.sum(np.all(grad == 0, axis=1)))
    bad = int((~np.isfinite(raw.numpy())).sum() + (~np.isfinite(grad)).sum())
    return [Check("zero gradients", zero / max(len(x), 1), zero > 0,
                  f"{zero} of {len(x)} images have an all-zero input gradient (a sign of masking)"),
            Check("NaN/inf", float(bad), bad > 0, f"{bad} NaN/inf values in the outputs and input gradients "
                                                  f"on {len(x)} images")]


@dataclass(frozen=True)
class Check:
    """One check's outcome: `flagged` is a sign of masking."""

    check: str
    value: float
    flagged: bool
    detail: str


def gradient_masking_checks(model, x, y, plan, clean, robust: dict, progress=None,
                            replicas: Replicas | None = None, stages: dict | None = None) -> list[Check]:
    """The checks of `plan` (an `evaluation.Plan` whose `checks` is set), each a `Check`.

    1. A gradient-free attack (SPSA, Square; Square is run here as a witness if
       it was not among the attacks) beating the strongest gradient attack (any
       attack that uses gradients, AutoAttack's ensemble included) by more than
       `GRADIENT_FREE_MARGIN` on the images both saw: the gradients mislead the
       gradient attacks. An ensemble whose last stage is gradient-free
       (AutoAttack's standard version: Square) is instead its own witness, as
       in AutoAttack's own check: that stage breaking more than
       `STAGE_WITNESS_MARGIN` of the images its gradient stages left robust
       (`stages[name]`: per image the position of the stage that broke it).
    2. PGD (APGD-CE in L1) at a radius that reaches any image's grey version
       (`LARGE_EPSILON` of the input range on every pixel) must reach near-zero
       accuracy; above `LARGE_EPSILON_CEILING` the gradient attack is not working.
    3. Doubling PGD's steps and EOT draws must not lower accuracy by more than
       `CONVERGENCE_MARGIN`; otherwise the reported PGD is not converged.
    4. `gradient_health`: zero input gradients, NaN/inf in outputs or gradients.

    `x`, `y` are all the evaluation images, `clean` the model's per-image
    accuracy on them; `robust` maps each attack that ran to its per-image
    accuracy over all of them (NaN where it did not attack). As everywhere, an
    image counts as robust only if it is also classified right unattacked.
    The checks' attacks are spread over `replicas` (default: one device), as
    the evaluation's are, with the same results on any number.
    """
    report = progress or (lambda message: None)
    checks, draws, random, threat = plan.checks, plan.accuracy_draws, plan.random, plan.threat
    spread = replicas or Replicas()
    idx = np.asarray(checks.images, dtype=int)
    xs, ys, right = x[idx], y[idx], clean[idx]
    robust, images = dict(robust), {a.name: np.asarray(a.images, dtype=int) for a in plan.attacks}
    if checks.square_witness:
        report(f"[checks] Square ({checks.square_queries} queries, EOT {checks.square_eot_samples}) on "
               f"{len(idx)} images as a gradient-free witness ...")
        witness = AttackPlan("square", {"queries": checks.square_queries}, checks.images, checks.square_eot_samples,
                             checks.seed, random)
        x_square = spread.run(witness, model, x, y, threat)
        robust["square"] = np.full(len(x), np.nan)
        robust["square"][idx] = np.minimum(right, per_example_correct(model, x_square, ys, draws, random=random))
        images["square"] = idx
    results = [] if checks.stage_witness is None else [
        stage_witness(checks.stage_witness, (stages or {}).get(checks.stage_witness), random, threat.norm.name)]
    gradient = [name for name in robust if not get_attack(name).gradient_free]
    for name in (n for n in robust if get_attack(n).gradient_free and gradient):
        on = functools.reduce(np.intersect1d, [images[g] for g in gradient], images[name])
        strongest = min(gradient, key=lambda g: np.mean(robust[g][on]))
        gap = float(np.mean(robust[strongest][on])) - float(np.mean(robust[name][on]))
        results.append(Check(f"{name} vs {strongest}", -gap, gap > GRADIENT_FREE_MARGIN,
                             f"{name} accuracy minus {strongest}'s on the same {len(on)} images: {-gap:+.3f}"))
    large_epsilon = threat.norm.cube_radius(int(np.prod(np.shape(xs)[1:])), LARGE_EPSILON * threat.width)
    report(f"[checks] {checks.attack} at ε = {large_epsilon:.4g} and with doubled steps/EOT on {len(idx)} images ...")
    large_pgd = AttackPlan(checks.attack, {"steps": checks.pgd_steps}, checks.images, checks.eot_samples, checks.seed,
                           random)
    large = _accuracy(spread, model, x, y, large_pgd, dataclasses.replace(threat, epsilon=large_epsilon), right,
                      draws, random)
    results.append(Check("large-ε PGD", large, large > LARGE_EPSILON_CEILING,
                         f"{checks.attack} accuracy at {threat.norm.title} ε={large_epsilon:.4g} is {large:.3f} "
                         "(should be near 0)"))
    if "pgd" in robust:
        reported = float(np.mean(robust["pgd"][idx]))
        doubled_pgd = AttackPlan("pgd", {"steps": 2 * checks.pgd_steps, "step_size": checks.pgd_step_size},
                                 checks.images, 2 * checks.eot_samples if random else 1, checks.seed, random)
        doubled = _accuracy(spread, model, x, y, doubled_pgd, threat, right, draws, random)
        drop = reported - doubled
        results.append(Check("PGD convergence", -drop, drop > CONVERGENCE_MARGIN,
                             f"doubling steps and EOT samples changes PGD accuracy by {-drop:+.3f}"))
    report(f"[checks] input gradients on {len(idx)} images (zero, NaN/inf) ...")
    return results + gradient_health(model, xs, ys, checks.eot_samples)


def stage_witness(name: str, codes, random: bool, norm: str) -> Check:
    """AutoAttack's own masking check on the ensemble `name`: the share of its images that its last,
    gradient-free stage broke after every gradient stage had failed (`codes`: per image the position of the
    stage that broke it, NaN where it did not attack), flagged above `STAGE_WITNESS_MARGIN`."""
    names = get_attack(name).stages(random, norm)
    if codes is None:
        raise ValueError(f"the masking checks need {name}'s stages (which stage broke each image); none were given.")
    codes = np.asarray(codes, np.float64)
    codes = codes[~np.isnan(codes)]
    last = len(names) - 1
    if codes.size and (codes.max() > last or codes.min() < -2):
        raise ValueError(f"{name}'s stage codes run from {codes.min():g} to {codes.max():g}, outside the {len(names)} "
                         f"stages the plan expects ({', '.join(names)}): it ran another version than the plan's.")
    share = float(np.mean(codes == last)) if len(codes) else 0.0
    return Check(f"{names[-1]} stage of {name}", share, share > STAGE_WITNESS_MARGIN,
                 f"{name}'s {names[-1]} stage broke {int(np.sum(codes == last))} of {len(codes)} images after its "
                 f"gradient stages ({share:.3f}; AutoAttack's own check warns above {STAGE_WITNESS_MARGIN})")


def _accuracy(spread: Replicas, model, x, y, attack: AttackPlan, threat: ThreatModel, clean, draws: int,
              random: bool) -> float:
    """`attack`'s accuracy on its images of `(x, y)` in `threat`'s ball, run over `spread`, an image counting
    only where `clean` (their unattacked accuracy) allows."""
    x_adv = spread.run(attack, model, x, y, threat)
    return float(np.minimum(clean, per_example_correct(model, x_adv, y[np.asarray(attack.images, dtype=int)], draws,
                                                       random=random)).mean())
