"""Robustness evaluation: accuracy of random models, attacks, effective robustness, gradient-masking checks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.attacks.eot import DEFAULT_EOT_SAMPLES, first_notice_of_probabilities, probe
from keras_pnil.attacks.pgd import pgd
from keras_pnil.attacks.registry import get_attack
from keras_pnil.attacks.square import square
from keras_pnil.layers import LOG_VARIANCE_RANGE, find_pnil
from keras_pnil.validation import check_choice

# Absolute accuracy margins (fractions) behind the gradient-masking checks.
GRADIENT_FREE_MARGIN = 0.05
CONVERGENCE_MARGIN = 0.03
LARGE_EPSILON_CEILING = 0.10
ACCURACY_MODES = ("expected", "mean_softmax")


def per_example_correct(model, x, y, draws: int = 1, mode: str = "expected",
                        batch_size: int = 1000) -> np.ndarray:
    """Per-image correctness of a (possibly random) model, in [0, 1].

    `mode="expected"` (default): the fraction of `draws` single stochastic
    forward passes that classify the image correctly, an unbiased estimate of
    the accuracy a user of the random model experiences. `mode="mean_softmax"`:
    1 if the softmax averaged over `draws` passes predicts the label, else 0.
    A deterministic model gives 0/1 either way.
    """
    check_choice("accuracy mode", mode, ACCURACY_MODES)
    draws = draws if probe(model, x).random else 1
    y = np.asarray(y)
    out = np.empty(len(x), np.float64)
    for i in range(0, len(x), batch_size):
        batch = np.asarray(x[i:i + batch_size], np.float32)
        passes = np.stack([model(batch, training=False).numpy() for _ in range(draws)])
        labels = y[i:i + batch_size]
        if mode == "expected":
            out[i:i + batch_size] = (passes.argmax(-1) == labels).mean(0)
        else:
            softmax = np.exp(passes - passes.max(-1, keepdims=True))
            softmax /= softmax.sum(-1, keepdims=True)
            out[i:i + batch_size] = softmax.mean(0).argmax(-1) == labels
    return out


def accuracy(model, x, y, draws: int = 1, mode: str = "expected") -> float:
    """Mean of `per_example_correct`: the model's accuracy on `(x, y)`."""
    return float(per_example_correct(model, x, y, draws, mode).mean())


@dataclass
class Budget:
    """The attack budget a robustness number was measured with."""

    epsilon: float
    num_images: int
    pgd_steps: int = 50
    pgd_step_size: float | None = None
    pgd_restarts: int = 1
    spsa_steps: int = 100
    spsa_samples: int = 2048  # SPSA's finite-difference perturbations per image and step
    spsa_images: int = 1000
    spsa_learning_rate: float = 0.01
    spsa_delta: float = 0.01
    apgd_steps: int = 100
    fab_steps: int = 100
    target_classes: int = 9  # APGD-T and FAB-T (AutoAttack's)
    square_queries: int = 5000
    square_images: int | None = None  # None: spsa_images
    autoattack_images: int | None = None  # AutoAttack and FAB-T; None: spsa_images
    eot_samples: int = 1  # as run: 1 on deterministic models
    # Per-attack EOT draws for random models (None: eot_samples): query-hungry attacks may get fewer than PGD.
    spsa_eot_samples: int | None = None
    square_eot_samples: int | None = None
    autoattack_eot_samples: int | None = None
    accuracy_draws: int = 10
    epochs: int | None = None  # the training run's planned epochs, stated beside the numbers
    patience: int | None = None  # set when training stopped at convergence: `epochs` is then its cap
    attacks: tuple = ("pgd", "spsa")

    def is_paper_protocol(self) -> bool:
        """Whether this is the paper's attack budget (PGD-50 of 2ε/50; SPSA 100×2048 on 1000 images)."""
        return (self.pgd_steps >= 50 and self.spsa_steps >= 100 and self.spsa_samples >= 2048
                and self.spsa_images >= 1000)

    def describe(self) -> str:
        """One line naming the budget of the attacks that ran, labelled REDUCED unless it is the paper's."""
        label = "paper protocol" if self.is_paper_protocol() else "REDUCED budget (not the paper's protocol)"
        values = asdict(self)
        parts = [f"{label}: ε={self.epsilon:.4g}, {self.num_images} test images"]
        for spec in map(get_attack, dict.fromkeys(self.attacks)):
            words = spec.describe(values)
            if not spec.full_set:
                words += f" on {spec.subset_size(values)} of them"
            if spec.eot_for(values) != self.eot_samples and "eot_samples" not in spec.options:
                words += f" (EOT {spec.eot_for(values)})"
            parts.append(words)
        if "square" not in self.attacks:
            parts.append(f"Square {self.square_queries} queries (masking witness)")
        parts.append(f"EOT {self.eot_samples} samples, accuracy over {self.accuracy_draws} draws"
                     + self._training())
        return ", ".join(parts)

    def _training(self) -> str:
        if self.epochs is None:
            return ""
        if self.patience is None:
            return f", {self.epochs} training epochs"
        return (f", trained to convergence: at most {self.epochs} epochs, "
                f"stopped after {self.patience} without a new best")


@dataclass
class RobustnessResult:
    """Clean and attacked accuracies (fractions) with the budget and the masking checks."""

    clean: float
    attacks: dict
    effective: float  # the paper's Min: the lowest accuracy over attacks
    worst_case: float  # an image counts only if it survives every attack
    budget: Budget
    subset_indices: list  # the images every attack ran on (SPSA's seeded subset)
    # per image of the subset: its correctness (a fraction over noise draws) under the attack that did best on it
    worst_case_per_image: list = field(default_factory=list)
    checks: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def robustness(model, x, y, epsilon: float, attacks=("pgd", "spsa"), *, seed: int = 0,
               checks: bool = True, progress=print, **budget_options) -> RobustnessResult:
    """Accuracy under each attack, the effective robustness (Min) and the per-example worst case.

    Attacks are names from `keras_pnil.attacks.ATTACKS` ("pgd", "spsa",
    "apgd-ce", "apgd-dlr", "square", "autoattack", "pgd-no-eot"). Gradient
    attacks run on all of `x`; the others on nested seeded subsets
    (`spsa_images`, `square_images`, `autoattack_images`), and the worst case on
    the smallest, whose indices are returned. Keyword options set the `Budget`
    (pgd_steps, spsa_samples, apgd_steps, square_queries, eot_samples, ...).
    Whether the model is random is judged by calling it twice on the same
    images: a random model is attacked with EOT (`eot_samples`, default 20, or
    an attack's own `*_eot_samples`), a deterministic one without; a model
    whose outputs are probabilities is attacked through their logarithms.
    """
    specs = [get_attack(name) for name in attacks]  # unknown names fail before any work is done
    x, y = np.asarray(x, np.float32), np.asarray(y)
    random = _is_random(model, x, progress)
    budget_options["eot_samples"] = budget_options.get("eot_samples") or DEFAULT_EOT_SAMPLES
    budget = Budget(epsilon=epsilon, num_images=len(x), attacks=tuple(attacks), **resolve_eot(budget_options, random))
    progress(f"[budget] {budget.describe()}")
    values, draws = asdict(budget), budget.accuracy_draws
    # Nested seeded subsets (prefixes of one permutation): the smallest is attacked by every attack.
    order = np.random.default_rng(seed).permutation(len(x))
    images = {spec.name: np.sort(order[:spec.subset_size(values)]) for spec in specs}
    subset = min([*images.values(), np.sort(order[:min(budget.spsa_images, len(x))])], key=len)
    correct = {"clean": per_example_correct(model, x, y, draws)}
    for spec in specs:
        idx = images[spec.name]
        progress(f"[{spec.name}] attacking {len(idx)} images (EOT {spec.eot_for(values)}) ...")
        x_adv = spec(model, x[idx], y[idx], budget.epsilon, values, seed=seed)
        correct[spec.name] = np.full(len(x), np.nan)
        correct[spec.name][idx] = per_example_correct(model, x_adv, y[idx], draws)
        progress(f"[{spec.name}] accuracy {np.nanmean(correct[spec.name]):.4f}")
    per_attack = {spec.name: float(np.nanmean(correct[spec.name])) for spec in specs}
    on_subset = np.min([correct[name][subset] for name in (*per_attack, "clean")], axis=0)
    result = RobustnessResult(
        clean=float(correct["clean"].mean()), attacks=per_attack,
        effective=min(per_attack.values()) if per_attack else float(correct["clean"].mean()),
        worst_case=float(on_subset.mean()), budget=budget, subset_indices=subset.tolist(),
        worst_case_per_image=on_subset.tolist())
    if checks:
        result.checks = gradient_masking_checks(model, x[subset], y[subset], budget, correct, subset, progress,
                                                images)
    return result


EOT_KEYS = ("eot_samples", "spsa_eot_samples", "square_eot_samples", "autoattack_eot_samples")


def resolve_eot(budget: dict, random: bool) -> dict:
    """`budget` as run on a random or a deterministic model: a deterministic one gets no EOT at all."""
    return budget if random else {**budget, **dict.fromkeys(EOT_KEYS[1:]), "eot_samples": 1}


def _is_random(model, x, progress) -> bool:
    """Whether `model` is random at inference, judged by its behaviour on `x`, said once in the attack log."""
    behaviour = probe(model, x)
    if behaviour.probabilities and first_notice_of_probabilities(model):
        progress("[model] outputs probabilities (rows sum to 1), not logits: attacking their logarithms "
                 "(models should output logits)")
    progress("[model] random at inference (two calls on the same images differ): attacked with EOT"
             if behaviour.random else "[model] deterministic (two calls on the same images agree): no EOT")
    return behaviour.random


def _check(name: str, value: float, flagged: bool, detail: str) -> dict:
    return {"check": name, "value": float(value), "flagged": bool(flagged), "detail": detail}


def gradient_masking_checks(model, x, y, budget: Budget, correct: dict, subset, progress=print,
                            images: dict | None = None) -> list:
    """Carlini et al.'s sanity checks, each a dict with `flagged` (True = sign of masking).

    1. A gradient-free attack (SPSA, and Square as a second witness, run here
       with `square_queries` if it was not among the attacks) beating the
       strongest gradient attack by more than `GRADIENT_FREE_MARGIN` on the
       same images: the gradients mislead the gradient attacks.
    2. PGD at ε = 0.5 (half the pixel range: any image can be turned into
       grey) must reach near-zero accuracy; above `LARGE_EPSILON_CEILING`,
       the gradient attack is not working.
    3. Doubling PGD's steps and EOT samples must not lower accuracy by more
       than `CONVERGENCE_MARGIN`; otherwise the reported PGD is not converged.

    `x`, `y` are the images of `subset` (indices into the evaluation images, which
    `correct` scores per attack); `images` gives each attack's own indices (default: `subset`).
    """
    results, eot, images = [], budget.eot_samples, dict(images or {})
    if "square" not in correct:
        square_eot = get_attack("square").eot_for(asdict(budget))
        progress(f"[checks] Square ({budget.square_queries} queries, EOT {square_eot}) as a gradient-free witness ...")
        x_square = square(model, x, y, budget.epsilon, queries=budget.square_queries, eot_samples=square_eot)
        correct = {**correct, "square": np.full(len(correct["clean"]), np.nan)}
        correct["square"][subset] = per_example_correct(model, x_square, y, budget.accuracy_draws)
        images["square"] = subset
    attacked = [get_attack(name) for name in correct if name != "clean"]
    gradient = [spec.name for spec in attacked if spec.full_set and not spec.gradient_free]
    for name in (spec.name for spec in attacked if spec.gradient_free and gradient):
        idx = images.get(name, subset)  # the gradient attacks ran on every image, so on these too
        strongest = min(gradient, key=lambda n: np.mean(correct[n][idx]))
        gap = float(np.mean(correct[strongest][idx])) - float(np.mean(correct[name][idx]))
        results.append(_check(f"{name} vs {strongest}", -gap, gap > GRADIENT_FREE_MARGIN,
                              f"{name} accuracy minus {strongest}'s on the same {len(idx)} images: {-gap:+.3f}"))
    progress("[checks] PGD at ε = 0.5 and with doubled steps/EOT ...")
    large = _accuracy_after_pgd(model, x, y, 0.5, budget.pgd_steps, eot, budget.accuracy_draws)
    results.append(_check("large-ε PGD", large, large > LARGE_EPSILON_CEILING,
                          f"PGD accuracy at ε=0.5 is {large:.3f} (should be near 0)"))
    if "pgd" in correct:
        pgd_on_subset = float(np.mean(correct["pgd"][subset]))
        doubled = _accuracy_after_pgd(model, x, y, budget.epsilon, 2 * budget.pgd_steps,
                                      2 * eot if probe(model, x).random else 1,
                                      budget.accuracy_draws, budget.pgd_step_size)
        drop = pgd_on_subset - doubled
        results.append(_check("PGD convergence", -drop, drop > CONVERGENCE_MARGIN,
                              f"doubling steps and EOT samples changes PGD accuracy by {-drop:+.3f}"))
    return results


def _accuracy_after_pgd(model, x, y, epsilon, steps, eot_samples, draws, step_size=None) -> float:
    x_adv = pgd(model, x, y, epsilon, steps=steps, step_size=step_size, eot_samples=eot_samples)
    return accuracy(model, x_adv, y, draws)


def epsilon_sweep(model, x, y, epsilons, steps: int = 50, eot_samples: int = 1, draws: int = 10) -> list:
    """PGD accuracy at each ε (the paper's Figure 5); it should fall towards 0."""
    return [_accuracy_after_pgd(model, x, y, e, steps, eot_samples, draws) for e in epsilons]


def eot_curve(model, x, y, epsilon: float, samples_list, steps: int = 50, draws: int = 10) -> list:
    """PGD accuracy against the number of EOT samples (the paper's Figure 4)."""
    return [_accuracy_after_pgd(model, x, y, epsilon, steps, s, draws) for s in samples_list]


def pnil_structure(layer, x, object_threshold: float = 0.5, background_threshold: float = 0.05) -> dict:
    """Has the PNIL learned structure? Mean noise σ on object vs background pixels, now and at init.

    Object pixels are those above `object_threshold`, background those below
    `background_threshold` (MNIST-like images on black). The paper's Figure 1
    shows low variance on the digit and high variance around it; σ equal to its
    initial value everywhere means the layer has not learned.
    """
    x = np.asarray(x, np.float32)
    sigma = layer.noise_stddev(x).numpy()
    w0 = np.asarray(layer.kernel_initializer(layer.kernel.shape), np.float32)
    b0 = np.asarray(layer.bias_initializer(layer.bias.shape), np.float32)
    sigma0 = np.exp(np.clip(x * w0 + b0, *LOG_VARIANCE_RANGE) / 2)
    on, off = x > object_threshold, x < background_threshold
    return {"sigma_object": float(sigma[on].mean()), "sigma_background": float(sigma[off].mean()),
            "init_sigma_object": float(sigma0[on].mean()), "init_sigma_background": float(sigma0[off].mean()),
            "mean_bias": float(layer.bias.numpy().mean()),
            "mean_abs_kernel": float(np.abs(layer.kernel.numpy()).mean())}


def sign_consistency(gradients) -> np.ndarray:
    """Per parameter, |Σ_t g_t| / Σ_t |g_t| over the first axis (batches t = 1…T) of `gradients`.

    1 when every batch pushes the parameter the same way; about 1/√T when the
    pushes are independent noise. Adam moves a parameter by about its learning
    rate times this per step (it divides the running mean of the gradient by its
    running magnitude), so the consistency, not the gradient's size, decides how
    far a parameter can travel in T steps.
    """
    g = np.asarray(gradients, np.float64)
    total = np.abs(g).sum(0)
    return np.divide(np.abs(g.sum(0)), total, out=np.zeros_like(total), where=total > 0)


def pnil_gradients(trainer, x, y, batch_size: int = 100, object_threshold: float = 0.25,
                   background_threshold: float = 0.01) -> dict:
    """How the training loss pulls on a PNIL's W and B, batch by batch: size, direction and sign consistency.

    `trainer` is an `AdversarialModel` whose first layer is a PNIL; each batch of
    `(x, y)` is perturbed by its training method and the gradient of the mean
    cross-entropy (with the layer's noise, as in training) is taken with respect to
    W and B. Pixel locations are grouped by the mean image of `x`: "object" where it
    exceeds `object_threshold` (where digits usually are), "background" where it is
    below `background_threshold` (the border, always black). Per group and
    parameter: the mean |g| per batch, the mean g (positive: gradient descent lowers
    the parameter, i.e. less noise), and the mean `sign_consistency`.
    """
    layer = find_pnil(trainer)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def gradients(xb, yb):
        x_adv = trainer.perturbation(lambda inputs: trainer(inputs, training=True), xb, yb)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, trainer(tf.stop_gradient(x_adv), training=True))
        return tape.gradient(loss, [layer.kernel, layer.bias])

    x, y = np.asarray(x, np.float32), np.asarray(y)
    batches = [gradients(x[i:i + batch_size], y[i:i + batch_size])
               for i in range(0, len(x) - batch_size + 1, batch_size)]
    mean_image = x.mean(0)
    groups = {"object": mean_image > object_threshold, "background": mean_image < background_threshold}
    result = {"batches": len(batches)}
    for name, index in (("W", 0), ("B", 1)):
        g = np.stack([b[index].numpy() for b in batches])
        consistency = sign_consistency(g)
        for group, where in groups.items():
            result[f"{group}_{name}"] = {"mean_abs": float(np.abs(g[:, where]).mean()),
                                         "mean": float(g[:, where].mean()),
                                         "consistency": float(consistency[where].mean())}
    result["pure_noise_consistency"] = float(1 / np.sqrt(max(len(batches), 1)))  # what independent pushes give
    return result


# ---------------------------------------------------------------- cost estimate
def cost_units(budget: dict, eot: int, attacks) -> float:
    """Forward-pass equivalents (a backward pass counts two) of one evaluation, masking checks included.

    A rough count: PGD restarts are counted in full, though they run only on
    the images still standing.
    """
    defaults = asdict(Budget(epsilon=0.1, num_images=budget["num_images"]))
    values = resolve_eot({**defaults, **budget, "eot_samples": eot}, eot > 1)
    specs = [get_attack(name) for name in attacks]
    n, s = values["num_images"], min(spec.subset_size(values) for spec in [*specs, get_attack("spsa")])
    per_attack = [spec.subset_size(values) * spec.cost(values, spec.eot_for(values)) for spec in specs]
    square = get_attack("square")
    square_check = 0 if "square" in attacks else s * square.cost(values, square.eot_for(values))
    checks = s * values["pgd_steps"] * eot * 3 * 5 + square_check  # large-ε PGD and doubled PGD
    return n * values["accuracy_draws"] * 2 + sum(per_attack) + checks


def forward_throughput(model, image_shape, batch_size: int = 1000, seconds: float = 1.0) -> float:
    """Images per second of a compiled forward pass of `model`, measured here.

    Timed over at least `seconds` of passes after two warm-up calls: a few
    milliseconds of a small network would measure the call overhead, not the model.
    """
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.random.uniform((batch_size, *image_shape))
    forward(x).numpy()
    forward(x).numpy()
    start, passes = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        forward(x).numpy()
        passes += 1
    return batch_size * passes / (time.perf_counter() - start)
