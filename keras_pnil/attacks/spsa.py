"""SPSA (Uesato et al., 2018): a gradient-free attack from finite differences, with EOT-averaged queries.

Built on CleverHans' `margin_logit_loss` and `_project_perturbation`. Two of
its parts cannot be used on Keras 3 as they are, so they are replaced here and
say why: its `SPSAAdam` passes the removed `lr` argument to Keras' Adam (and
handles one image at a time), and `projected_optimization` draws its random
start from TensorFlow's global generator, which an attack here must not touch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.spsa import _project_perturbation, margin_logit_loss

from keras_pnil.attacks.common import (
    DEFAULT_BATCH_SIZE,
    SEED_SPEC,
    Draws,
    batch_signature,
    check_attack_args,
    compiled,
    run_batched,
)
from keras_pnil.attacks.eot import EOT, tile
from keras_pnil.threat import DEFAULT_BOUNDS, ThreatModel
from keras_pnil.validation import check_count, check_positive


class BatchedSPSAAdam:
    """SPSA gradient estimates with Adam updates, for many images at once.

    CleverHans' semantics: `perturbations` mirrored ±δ·Rademacher
    perturbations per image and step, gradient ≈ mean(loss · Δ) / δ, then an
    Adam step. The perturbations are evaluated in `chunks` sequential passes to
    bound memory; the chunk estimates are averaged (CleverHans sums them, which
    Adam's scale invariance makes equivalent up to its ε).
    """

    def __init__(self, learning_rate: float = 0.01, delta: float = 0.01,
                 perturbations: int = 128, chunks: int = 1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-9):
        if perturbations < 2 or perturbations % 2 or perturbations % (2 * chunks):
            raise ValueError(f"perturbations must be even and split into {chunks} equal mirrored chunks; "
                             f"got {perturbations!r}.")
        self.learning_rate, self.delta = learning_rate, delta
        self.half_chunk, self.chunks = perturbations // (2 * chunks), chunks
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def init_state(self, x):
        return {"t": 0.0, "m": tf.zeros_like(x), "u": tf.zeros_like(x)}

    def _gradient(self, loss_fn, x, rng: Draws):
        shape = tf.concat([[self.half_chunk], tf.shape(x)], 0)
        # Extra dimensions so a per-(perturbation, image) loss broadcasts over pixels.
        loss_shape = tf.concat([[2 * self.half_chunk, tf.shape(x)[0]], tf.ones(tf.rank(x) - 1, tf.int32)], 0)

        def chunk_estimate(total, chunk):
            delta_x = self.delta * tf.sign(rng.at(chunk).uniform(shape, -1.0, 1.0, dtype=x.dtype))
            # Static shapes, so the model's graph keeps its fused, shape-specialised kernels (a quarter
            # faster here than on dimensions known only at run time).
            delta_x = tf.ensure_shape(tf.concat([delta_x, -delta_x], axis=0), [2 * self.half_chunk, *x.shape])
            losses = tf.reshape(loss_fn(x[None] + delta_x), loss_shape)
            # Static shape kept for the loop (the loss's reshape hides the channel count).
            return tf.ensure_shape(total + tf.reduce_mean(losses * delta_x, axis=0) / self.delta, x.shape)

        total = tf.foldl(chunk_estimate, tf.range(self.chunks), initializer=tf.zeros_like(x))
        return total / self.chunks

    def minimize(self, loss_fn, x, state, rng: Draws):
        """One Adam step on `x` down the SPSA estimate of ∇ loss_fn, its perturbations from `rng` (the step's
        `Draws`); returns (x, state)."""
        t = state["t"] + 1.0
        g = self._gradient(loss_fn, x, rng)
        m = self.beta_1 * state["m"] + (1.0 - self.beta_1) * g
        u = self.beta_2 * state["u"] + (1.0 - self.beta_2) * g * g
        m_hat = m / (1.0 - tf.pow(self.beta_1, t))
        u_hat = u / (1.0 - tf.pow(self.beta_2, t))
        return x - self.learning_rate * m_hat / (tf.sqrt(u_hat) + self.epsilon), {"t": t, "m": m, "u": u}


def _margin_loss(model_fn: EOT):
    """Untargeted margin loss (CleverHans' `margin_logit_loss`, sign flipped), mean over EOT draws.

    Accepts one batch [B, ...] or a stack of SPSA queries [S, B, ...] and
    returns one loss per image (and query).
    """
    def loss_fn(images, labels):
        query_shape = tf.shape(images)[: tf.rank(images) - tf.rank(labels) - 3]
        flat = tf.reshape(images, [-1, *images.shape[-3:]])  # static pixels: see `chunk_estimate`
        flat_labels = tf.reshape(tf.broadcast_to(labels, tf.shape(images)[: tf.rank(images) - 3]), [-1])
        draws = model_fn.draws(flat)
        classes = tf.shape(draws)[-1]
        margins = margin_logit_loss(tf.reshape(draws, [-1, classes]),
                                    tile(flat_labels, model_fn.samples), nb_classes=classes)
        mean_margin = tf.reduce_mean(tf.reshape(margins, [model_fn.samples, -1]), axis=0)
        return -tf.reshape(mean_margin, tf.concat([query_shape, tf.shape(labels)], 0))

    return loss_fn


def _spsa_graph(loss_fn, threat: ThreatModel, steps: int, optimizer: BatchedSPSAAdam, early_stop: bool,
                signature: list):
    epsilon, (lo, hi) = threat.epsilon, threat.bounds

    @tf.function(input_signature=[*signature, SEED_SPEC])
    def attack(x, y, seed):
        rng = Draws(seed)
        start = rng.uniform(tf.shape(x), -epsilon, epsilon)
        delta = _project_perturbation(start, epsilon, x, clip_min=lo, clip_max=hi)
        state = optimizer.init_state(delta)
        for step in tf.range(steps):
            delta, state = optimizer.minimize(lambda d: loss_fn(x + d, y), delta, state, rng.at(step))
            delta = _project_perturbation(delta, epsilon, x, clip_min=lo, clip_max=hi)
            if early_stop and tf.reduce_mean(loss_fn(x + delta, y)) < 0.0:
                break  # CleverHans' rule: the batch's mean margin says it is fooled
        return x + delta

    return attack


NORMS_BUILT = ("linf",)


def _chunks(perturbations: int, per_pass: int, max_model_batch: int) -> int:
    """The fewest equal mirrored chunks that keep one forward pass under `max_model_batch` inputs."""
    return next(c for c in range(1, perturbations // 2 + 1)
                if perturbations % (2 * c) == 0 and per_pass / c <= max_model_batch or c == perturbations // 2)


def spsa(model, x, y, epsilon: float, *, steps: int = 100, perturbations: int = 2048, learning_rate: float = 0.01,
         delta: float = 0.01, early_stop: bool = False, max_model_batch: int = 16384, norm: str = "linf",
         bounds=DEFAULT_BOUNDS, eot_samples: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
         seed: int | None = 0) -> np.ndarray:
    """The gradient-free SPSA attack (L∞ only), batched, with the margin loss averaged over EOT draws.

    Args:
        model: A Keras model that outputs logits.
        x, y: Images within `bounds` and integer labels.
        epsilon: L∞ radius, in the units of the model's inputs.
        steps: Adam steps (the paper: 100).
        perturbations: Finite-difference perturbations per image and step
            (the paper's "2048 samples"); even.
        learning_rate, delta: Adam's rate and the perturbation size, as fractions of the input range
            (multiplied by hi - lo: the same defaults for [0, 1] and [0, 255]).
        early_stop: End once the batch's mean margin loss is negative.
        max_model_batch: Most inputs per forward pass (memory).
        norm: "linf" (SPSA has no L2 or L1 version here: any other norm is an error).
        bounds: The model's input range (lo, hi).
        eot_samples: Noise draws per query (default: 20 on random models, 1 otherwise).
        batch_size: Images per batch.
        seed: Seed of the attack's draws (`attacks.common.SeededGraph`); None: a fresh one.

    Returns:
        The adversarial images, a NumPy array shaped like `x`.
    """
    x, y, threat = check_attack_args(model, x, y, epsilon, batch_size, norm=norm, bounds=bounds, attack="spsa",
                                     norms=NORMS_BUILT)
    steps, perturbations = check_count("steps", steps), check_count("perturbations", perturbations, minimum=2)
    check_positive("learning_rate", learning_rate)
    check_positive("delta", delta)
    model_fn = EOT(model, eot_samples, images=x)
    batch_size = min(batch_size, max(len(x), 1))
    chunks = _chunks(perturbations, perturbations * batch_size * model_fn.samples, max_model_batch)

    def build():
        optimizer = BatchedSPSAAdam(learning_rate * threat.width, delta * threat.width, perturbations, chunks)
        return _spsa_graph(_margin_loss(model_fn), threat, steps, optimizer, early_stop, batch_signature(x))

    attack = compiled(model, ("spsa", np.shape(x)[1:], model_fn.samples, threat, steps, perturbations,
                              learning_rate, delta, early_stop, chunks), build, seed,
                      sliced=False)  # unsliced: the early stop reads the whole batch's mean margin (CleverHans' rule)
    return run_batched(attack, x, y, batch_size, f"spsa {steps} steps × {perturbations} perturbations")
