"""Auto-PGD (Croce and Hein, 2020) in L∞ and L2, and APGD-L1 (Croce and Hein, 2021, "Mind the box") with its
optional larger-ε warm-up: untargeted with the CE or DLR loss, and APGD-T; EOT gradients."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tensorflow as tf

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    SEED_SPEC,
    TARGET_CLASSES,
    Draws,
    batch_signature,
    batches,
    check_attack_args,
    compiled,
    eot_scores,
    graph_loop,
    per_image,
    target_classes,
)
from keras_pnil.attacks.eot import EOT
from keras_pnil.threat import DEFAULT_BOUNDS, ThreatModel
from keras_pnil.validation import check_choice, check_count

LOSSES = ("ce", "dlr")
NORMS_BUILT = ("linf", "l2", "l1")
# APGD-L1's sparsity schedule (Croce and Hein, 2021): a fifth of the coordinates move at first; every 4 % of
# the steps the sparsity is set to the best point's, / 1.5, and the step (ε at first) is divided by 1.5 unless
# the best point got sparser by 5 % (then it is reset to ε and the attack restarts from it), never under ε/10.
L1_START_SPARSITY, L1_PERIOD, L1_SHRINK, L1_SPARSER, L1_MIN_STEP = 0.2, 0.04, 1.5, 0.95, 10.0
# APGD-L1's larger-ε warm-up (AutoAttack's L1 standard version, `use_largereps`): (radius as a multiple of ε,
# tenths of the steps): 3ε, 2ε, then ε for the rest (see `l1_warmup_schedule`).
L1_WARMUP = ((3.0, 3), (2.0, 3), (1.0, 4))


def _per_draw_loss(name: str):
    """Per-example loss to maximise from per-draw logits [S, B, C], averaged over the S draws.

    "ce" and "dlr" are untargeted; "dlr-t" is the targeted DLR loss of
    APGD-T, which raises the target's logit against the label's.
    """
    def loss(draws, y, target):
        labels = tf.broadcast_to(tf.cast(y, tf.int32)[None], tf.shape(draws)[:2])
        if name == "ce":
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=draws), 0)
        true = tf.gather(draws, labels, batch_dims=2)
        top = tf.sort(draws, axis=-1, direction="DESCENDING")
        # Difference of logits ratios: scale-invariant, so they survive saturated softmaxes.
        if name == "dlr":
            other = tf.where(tf.equal(tf.argmax(draws, -1, output_type=tf.int32), labels), top[..., 1], top[..., 0])
            per_draw = -(true - other) / (top[..., 0] - top[..., 2] + 1e-12)
        else:
            targets = tf.broadcast_to(tf.cast(target, tf.int32)[None], tf.shape(draws)[:2])
            wanted = tf.gather(draws, targets, batch_dims=2)
            per_draw = -(true - wanted) / (top[..., 0] - (top[..., 2] + top[..., 3]) / 2 + 1e-12)
        return tf.reduce_mean(per_draw, axis=0)

    return loss


def apgd_checkpoints(steps: int) -> np.ndarray:
    """Iterations at which APGD reconsiders its step size.

    The paper's p0 = 0, p1 = 0.22, pj+1 = pj + max(pj - pj-1 - 0.03, 0.06), in
    whole iterations: windows of 22 % of the steps, each 3 % shorter than the
    last, never under 6 % (22, 41, 57, 70, 80, 87, 93, 99 for 100 steps).
    """
    window, shrink, shortest = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    points = [window]
    while points[-1] + max(window - shrink, shortest) <= steps:
        window = max(window - shrink, shortest)
        points.append(points[-1] + window)
    return np.array(points)


# APGD-CE and APGD-T run one compiled graph, the loss chosen when it is called (`_graph_losses`): an ensemble
# traces and instantiates it once, not twice (about 3–4 s a graph on this project's CPU).
SHARED_LOSSES = ("ce", "dlr-t")


def _graph_losses(loss: str) -> tuple[str, ...]:
    """The losses of the compiled graph that runs `loss`: CE and targeted DLR share one."""
    return SHARED_LOSSES if loss in SHARED_LOSSES else (loss,)


def _evaluator(model_fn: EOT, losses: tuple[str, ...]):
    """(x, y, target, which) → (per-image losses, their gradient, fooled), from one EOT forward pass, the
    loss `losses[which]` (a scalar tensor, so that one graph serves them all)."""
    loss_of = [_per_draw_loss(name) for name in losses]

    def evaluate(x, y, target, which):
        with tf.GradientTape() as tape:
            tape.watch(x)
            draws = model_fn.draws(x)
            if len(loss_of) == 1:
                losses = loss_of[0](draws, y, target)
            else:  # the targeted DLR reads the 4th-largest logit: APGD-T checks the classes before it runs
                losses = tf.switch_case(which, [lambda f=f: f(draws, y, target) for f in loss_of])
            total = tf.reduce_sum(losses)  # a sum: each image's gradient is its own
        fooled = tf.not_equal(tf.argmax(tf.reduce_mean(tf.nn.log_softmax(draws), 0), -1, output_type=tf.int32),
                              tf.cast(y, tf.int32))
        return losses, tape.gradient(total, x), fooled

    return evaluate


def _apgd_graph(model_fn: EOT, threat: ThreatModel, steps: int, losses: tuple[str, ...], momentum: float,
                rho: float, signature: list):
    """The compiled APGD loop (L∞ or L2) for one batch: returns (best adversarial or highest-loss input, fooled)."""
    evaluate = _evaluator(model_fn, losses)
    epsilon = threat.epsilon
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[checkpoints] = True
    window = np.zeros(steps + 1, np.float32)
    window[checkpoints] = np.diff(np.concatenate([[0], checkpoints]))

    @tf.function(input_signature=[*signature, SEED_SPEC], autograph=False)  # see `graph_loop`
    def attack(x, y, target, which, seed):
        x_k = threat.random_start(Draws(seed), x)
        loss_k, grad, fooled = evaluate(x_k, y, target, which)
        eta = tf.fill(tf.shape(loss_k), 2.0 * epsilon)

        def step(k, x_k, x_prev, loss_k, grad, best_adv, ever_fooled, x_best, loss_best, grad_best, eta,
                 increases, eta_at_check, best_at_check):
            z = threat.project(x_k + per_image(eta, x) * threat.ascent(grad), x)
            weight = tf.where(k == 0, 1.0, momentum)  # the first step is a plain projected step
            x_next = threat.project(x_k + weight * (z - x_k) + (1.0 - weight) * (x_k - x_prev), x)
            loss_next, grad_next, fooled = evaluate(x_next, y, target, which)
            best_adv = tf.where(per_image(fooled & ~ever_fooled, x), x_next, best_adv)
            ever_fooled |= fooled
            increases += tf.cast(loss_next > loss_k, tf.float32)
            improved = loss_next > loss_best
            x_best = tf.where(per_image(improved, x), x_next, x_best)
            grad_best = tf.where(per_image(improved, x), grad_next, grad_best)
            loss_best = tf.where(improved, loss_next, loss_best)
            # At a checkpoint, halve the step where progress stalled, restarting from the best point.
            check = tf.gather(is_checkpoint, k + 1)
            stalled = check & ((increases <= rho * tf.gather(window, k + 1))
                               | ((eta == eta_at_check) & (loss_best <= best_at_check)))
            eta = tf.where(stalled, eta / 2.0, eta)
            x_restart = tf.where(per_image(stalled, x), x_best, x_next)
            grad = tf.where(per_image(stalled, x), grad_best, grad_next)
            increases = tf.where(check, tf.zeros_like(increases), increases)
            eta_at_check, best_at_check = tf.where(check, eta, eta_at_check), tf.where(check, loss_best, best_at_check)
            return (k + 1, x_restart, x_k, loss_next, grad, best_adv, ever_fooled, x_best, loss_best, grad_best, eta,
                    increases, eta_at_check, best_at_check)

        state = graph_loop(step, steps, x_k, x_k, loss_k, grad, tf.where(per_image(fooled, x), x_k, x), fooled, x_k,
                           loss_k, grad, eta, tf.zeros_like(loss_k), eta, loss_k)
        _, _, _, _, best_adv, ever_fooled, x_best, *_ = state
        return tf.where(per_image(ever_fooled, x), best_adv, x_best), ever_fooled

    return attack


def l1_warmup_schedule(steps: int) -> list[tuple[float, int]]:
    """APGD-L1's larger-ε warm-up (AutoAttack's `use_largereps`): (radius as a multiple of ε, iterations) per phase.

    Radii 3ε, 2ε, ε over ⌈30 %⌉, ⌈30 %⌉ and the rest of `steps` (at least 3;
    the last phase gets no iteration at 4 steps, as in the official code).

    Example:
        >>> l1_warmup_schedule(100)
        [(3.0, 30), (2.0, 30), (1.0, 40)]
    """
    steps = check_count("steps", steps)
    if steps < len(L1_WARMUP):
        raise ValueError(f"APGD-L1's larger-ε warm-up needs at least {len(L1_WARMUP)} steps (one per radius); "
                         f"got steps={steps}. Give more steps or warmup=False.")
    first = [-(-steps * tenths // 10) for _, tenths in L1_WARMUP[:-1]]  # ⌈share · steps⌉ in integers
    return [(multiple, n) for (multiple, _), n in zip(L1_WARMUP, [*first, steps - sum(first)], strict=True)]


def _apgd_l1_graph(model_fn: EOT, threat: ThreatModel, steps: int, losses: tuple[str, ...],
                   signature: list, warmup: bool = False):
    """APGD-L1 for one batch (Croce and Hein, 2021): sparse steps projected onto the L1 ball ∩ the input
    range, no momentum, the sparsity and step adapted every `L1_PERIOD` of a phase's steps (see the constants).

    One phase of `steps` at ε, or with `warmup` the phases of `l1_warmup_schedule`, each starting from the
    previous one's highest-loss point projected onto its own ball (the first from a Gaussian draw projected
    onto its ball, the official start); only the last phase's adversarial points count."""
    evaluate = _evaluator(model_fn, losses)
    phases = l1_warmup_schedule(steps) if warmup else [(1.0, steps)]
    balls = [(replace(threat, epsilon=threat.epsilon * multiple), n) for multiple, n in phases]

    def moved(z, x):  # per image, the coordinates z changes
        return tf.reduce_sum(tf.cast(tf.reshape(tf.abs(z - x), [tf.shape(x)[0], -1]) > 1e-10, tf.float32), axis=1)

    def phase(ball: ThreatModel, phase_steps: int, x, y, target, which, x_k, chained: bool):
        epsilon, period = ball.epsilon, max(int(L1_PERIOD * phase_steps), 1)
        features = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
        loss_k, grad, fooled = evaluate(x_k, y, target, which)
        best_adv = tf.where(per_image(fooled, x), x_k, x)
        ever_fooled, x_best, loss_best, grad_best = fooled, x_k, loss_k, grad
        eta = tf.fill(tf.shape(loss_k), epsilon)
        if chained:  # a phase given its start: the sparsity is the start's, as in the official code
            moved_before = moved(x_k, x)
            sparsity = moved_before / features / L1_SHRINK
        else:
            sparsity = tf.fill(tf.shape(loss_k), L1_START_SPARSITY)
            moved_before = tf.fill(tf.shape(loss_k), features)

        def step(k, x_k, grad, best_adv, ever_fooled, x_best, loss_best, grad_best, eta, sparsity, moved_before):
            x_next = ball.project(x_k + per_image(eta, x) * ball.ascent(grad, sparsity), x)
            loss_next, grad_next, fooled = evaluate(x_next, y, target, which)
            best_adv = tf.where(per_image(fooled & ~ever_fooled, x), x_next, best_adv)
            ever_fooled |= fooled
            improved = loss_next > loss_best
            x_best = tf.where(per_image(improved, x), x_next, x_best)
            grad_best = tf.where(per_image(improved, x), grad_next, grad_best)
            loss_best = tf.where(improved, loss_next, loss_best)
            # Every `period` steps: adapt the sparsity and the step; restart from the best point if it got sparser.
            check = (k + 1) % period == 0
            moved_now = moved(x_best, x)
            sparser = check & (moved_now / moved_before < L1_SPARSER)
            sparsity = tf.where(check, moved_now / features / L1_SHRINK, sparsity)
            moved_before = tf.where(check, moved_now, moved_before)
            eta = tf.where(check, tf.clip_by_value(tf.where(sparser, epsilon, eta / L1_SHRINK), epsilon / L1_MIN_STEP,
                                                   epsilon), eta)
            x_restart = tf.where(per_image(sparser, x), x_best, x_next)
            grad = tf.where(per_image(sparser, x), grad_best, grad_next)
            return (k + 1, x_restart, grad, best_adv, ever_fooled, x_best, loss_best, grad_best, eta, sparsity,
                    moved_before)

        state = graph_loop(step, phase_steps, x_k, grad, best_adv, ever_fooled, x_best, loss_best, grad_best, eta,
                           sparsity, moved_before)
        _, _, best_adv, ever_fooled, x_best, *_ = state
        return x_best, tf.where(per_image(ever_fooled, x), best_adv, x_best), ever_fooled

    @tf.function(input_signature=[*signature, SEED_SPEC], autograph=False)
    def attack(x, y, target, which, seed):
        x_k = x + Draws(seed).normal(tf.shape(x))
        for ball, phase_steps in balls:
            x_k, adv, fooled = phase(ball, phase_steps, x, y, target, which, ball.project(x_k, x), chained=warmup)
        return adv, fooled

    return attack


def _compiled_apgd(model, x, threat: ThreatModel, steps: int, loss: str, momentum: float, rho: float,
                   warmup: bool, eot_samples: int | None, seed: int | None):
    """The EOT model_fn and the compiled APGD `(x, y, target) → (adversarial, fooled)` with `loss` (its graph
    shared with the other losses of `_graph_losses(loss)`)."""
    model_fn = EOT(model, eot_samples, images=x)
    losses = _graph_losses(loss)
    signature = [*batch_signature(x, 2), tf.TensorSpec((), tf.int32)]

    def build():
        if threat.norm.name == "l1":  # L1's own schedule (the 2021 paper)
            return _apgd_l1_graph(model_fn, threat, steps, losses, signature, warmup)
        return _apgd_graph(model_fn, threat, steps, losses, momentum, rho, signature)

    key = ("apgd", np.shape(x)[1:], model_fn.samples, threat, steps, losses, momentum, rho, warmup)
    graph = compiled(model, key, build, seed, sliced=not model_fn.random)
    which = tf.constant(losses.index(loss), tf.int32)
    return model_fn, lambda x, y, target: graph(x, y, target, which)


def _check_warmup(warmup: bool, threat: ThreatModel, steps: int) -> bool:
    """`warmup`, checked: only APGD-L1 has the larger-ε warm-up, and it needs a step per radius."""
    if warmup and threat.norm.name != "l1":
        raise ValueError(f"the larger-ε warm-up is APGD-L1's; norm={threat.norm.name!r} has none. "
                         "Use norm='l1' or warmup=False.")
    if warmup:
        l1_warmup_schedule(steps)
    return bool(warmup)


def _attack_standing(attack, x, y, targets, x_adv, fooled, batch_size: int, label: str) -> None:
    """Runs `attack` on the images not yet fooled, updating `x_adv` and `fooled` in place."""
    todo = np.flatnonzero(~fooled)
    for idx in batches(todo, batch_size, label):
        adv, hit = attack(tf.constant(x[idx]), tf.constant(y[idx]), tf.constant(targets[idx]))
        x_adv[idx], fooled[idx] = adv.numpy(), hit.numpy()


def apgd(model, x, y, epsilon: float, *, steps: int = 100, loss: str = "ce", restarts: int = 1,
         momentum: float = 0.75, rho: float = 0.75, norm: str = "linf", bounds=DEFAULT_BOUNDS,
         warmup: bool = False, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
         seed: int | None = 0) -> np.ndarray:
    """Auto-PGD, untargeted, in L∞, L2 or L1, with EOT gradients on random models.

    L∞ and L2: step size 2ε halved at the paper's checkpoints when fewer than
    `rho` of the steps since the last checkpoint raised the loss or the best
    loss has not moved (then restarting from the best point); momentum 0.75;
    steps along sign(∇) or ∇/‖∇‖₂, projected exactly onto the ball ∩ the input
    range. L1: APGD-L1's sparse steps and schedule (see `L1_START_SPARSITY`)
    from a Gaussian draw projected onto the ball, and with `warmup` the
    larger-ε warm-up of AutoAttack's L1 version (`l1_warmup_schedule`).

    Args:
        model: A Keras model that outputs logits.
        x, y: Images within `bounds` and integer labels.
        epsilon: The radius, in the units of the model's inputs.
        steps: Iterations per restart.
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio), both
            averaged over the EOT draws, as is the prediction that decides success.
        restarts: Restarts, each on the images not yet fooled.
        momentum, rho: The paper's momentum and step-halving threshold (L∞ and L2).
        norm: "linf", "l2" or "l1".
        bounds: The model's input range (lo, hi).
        warmup: L1 only: each restart runs at 3ε, 2ε, then ε (`l1_warmup_schedule`;
            at least 3 steps), each phase from the last one's highest-loss point.
        eot_samples: Noise draws per gradient (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's draws (`attacks.common.SeededGraph`); None: a fresh one.

    Returns:
        Per image, the first misclassified input found, else the one with the
        highest loss, as a NumPy array shaped like `x`.

    Example:
        >>> x_adv = apgd(model, x, y, 0.5, norm="l2", steps=100)
    """
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds,
                                     attack="apgd", norms=NORMS_BUILT)
    steps, restarts = check_count("steps", steps), check_count("restarts", restarts)
    check_choice("APGD loss", loss, LOSSES)
    warmup = _check_warmup(warmup, threat, steps)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    _, attack = _compiled_apgd(model, x, threat, steps, loss, momentum, rho, warmup, eot_samples, seed)
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    for restart in range(restarts):
        _attack_standing(attack, x, y, y, x_adv, fooled, batch_size, f"apgd-{loss} {restart + 1}/{restarts}")
    return x_adv


def apgd_targeted(model, x, y, epsilon: float, *, steps: int = 100, targets: int = TARGET_CLASSES,
                  momentum: float = 0.75, rho: float = 0.75, norm: str = "linf", bounds=DEFAULT_BOUNDS,
                  warmup: bool = False, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  seed: int | None = 0) -> np.ndarray:
    """APGD-T: APGD with the targeted DLR loss, once per target class (Croce and Hein, 2020).

    The targets of an image are the classes its clean (EOT) prediction ranks
    2nd, 3rd, ..., `targets + 1`-th; each run of `steps` iterations starts on
    the images that no earlier target fooled. Success means misclassified, as
    in AutoAttack, whichever class wins.

    Args:
        model: A Keras model that outputs logits; at least 4 classes (the loss
            reads the 4th-largest logit).
        x, y: Images within `bounds` and integer labels.
        epsilon: The radius, in the units of the model's inputs.
        steps: Iterations per target.
        targets: Target classes per image (at most the number of classes - 1).
        momentum, rho: APGD's momentum and step-halving threshold.
        norm: "linf", "l2" or "l1" (as `apgd`).
        bounds: The model's input range (lo, hi).
        warmup: L1 only: the larger-ε warm-up for each target (as `apgd`).
        eot_samples: Noise draws per gradient (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's draws (`attacks.common.SeededGraph`); None: a fresh one.

    Returns:
        Per image, the first misclassified input found, else the last run's
        highest-loss input, as a NumPy array shaped like `x`.
    """
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds,
                                     attack="apgd-t", norms=NORMS_BUILT)
    steps, targets = check_count("steps", steps), check_count("targets", targets)
    warmup = _check_warmup(warmup, threat, steps)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if not len(x):
        return x.copy()
    model_fn, attack = _compiled_apgd(model, x, threat, steps, "dlr-t", momentum, rho, warmup, eot_samples, seed)
    classes = eot_scores(model_fn, x[:1]).shape[1]  # from the output itself: any model, subclassed too
    if classes < 4:
        raise ValueError(f"APGD-T needs at least 4 classes; model {model.name!r} has {classes}.")
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    for k, target in enumerate(target_classes(model_fn, x, targets, batch_size).T, start=1):
        _attack_standing(attack, x, y, target, x_adv, fooled, batch_size, f"apgd-t target {k}/{targets}")
    return x_adv
