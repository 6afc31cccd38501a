"""Attacks: input gradients with EOT; PGD, SPSA, Auto-PGD, Square and an AutoAttack-style ensemble.

Every attack is a function of a `model_fn` (a callable from inputs to
logits), after CleverHans. `EOT` turns a model with random layers into such a
`model_fn`, so every attack gains Expectation over Transformation without
knowing about it.
"""

from __future__ import annotations

import functools
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.layers import has_random_layer


def _tile(x, samples: int):
    """`samples` copies of the batch, stacked on the batch axis (sample-major)."""
    return tf.tile(x, tf.concat([[samples], tf.ones(tf.rank(x) - 1, tf.int32)], 0))


def cross_entropy_sum(y, logits):
    """Summed (not averaged) cross-entropy: its input gradient is per-example."""
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=tf.cast(logits, tf.float32)))


def input_gradient(model_fn, x, y, samples: int = 1):
    """∇x of the cross-entropy summed over `samples` independent draws of the model's noise.

    The batch is tiled `samples` times and run in one pass, so L gradient
    samples cost one (larger) forward-backward pass, not L Python iterations.
    """
    xt, yt = (x, y) if samples == 1 else (_tile(x, samples), _tile(y, samples))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = cross_entropy_sum(yt, model_fn(xt))
    grad = tape.gradient(loss, xt)
    if samples > 1:
        grad = tf.reduce_sum(tf.reshape(grad, tf.concat([[samples], tf.shape(x)], 0)), 0)
    return grad


def _check_attack_args(x, y, epsilon: float) -> None:
    from keras_pnil.data import check_images

    check_images(x, "images to attack")
    if not isinstance(epsilon, (int, float)) or not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be a number in (0, 1) for pixels in [0, 1]; got {epsilon!r}.")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} images, {len(y)} labels.")


class EOT:
    """A `model_fn` for attacks on random models: Expectation over Transformation.

    Calling it returns the log-probabilities averaged over `samples` noise
    draws, computed in one pass over the batch tiled `samples` times. The
    negative log-likelihood of the true class under this output is exactly the
    mean cross-entropy over draws, so its gradient is the EOT gradient of
    Athalye et al.; `draws` gives the per-draw logits for losses that need them.

    For a model with no random layer, more than one sample only repeats the
    same computation: a warning is given and one sample used.
    """

    def __init__(self, model, samples: int = 1):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"eot_samples must be an integer >= 1; got {samples!r}.")
        if samples > 1 and not has_random_layer(model):
            warnings.warn(f"Model {model.name!r} has no random layer: eot_samples={samples} "
                          "is pointless, using 1.", stacklevel=3)
            samples = 1
        self.model, self.samples = model, samples

    def draws(self, x):
        """Logits of each draw, shaped [samples, batch, classes]."""
        logits = tf.cast(self.model(_tile(x, self.samples), training=False), tf.float32)
        return tf.reshape(logits, [self.samples, tf.shape(x)[0], -1])

    def __call__(self, x):
        return tf.reduce_mean(tf.nn.log_softmax(self.draws(x)), axis=0)


def negative_log_likelihood(labels, logits):
    """Per-example -log p(label) for log-probability outputs (such as `EOT`'s)."""
    return -tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)


def _batched(fn, x, y, batch_size: int):
    """Applies a compiled attack to `x` in batches (one graph, no per-step host round trip)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    parts = [fn(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size])).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else x.copy()


def pgd(model, x, y, epsilon: float, steps: int = 50, step_size: float | None = None,
        eot_samples: int = 1, random_start: bool = True, batch_size: int = 500) -> np.ndarray:
    """Untargeted L∞ PGD on the true labels, with EOT: CleverHans' `projected_gradient_descent`.

    The default step size is 2ε/steps (the paper's 2ε/50 for 50 steps), so
    fewer steps still cover the ε-ball. Returns the adversarial images as a
    NumPy array.
    """
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    _check_attack_args(x, y, epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
    step_size = 2 * epsilon / steps if step_size is None else step_size
    if not 0 < step_size <= epsilon:
        raise ValueError(f"step_size must lie in (0, epsilon={epsilon}]; got {step_size!r}.")
    model_fn = EOT(model, eot_samples)

    @tf.function
    def attack(xb, yb):
        # A tensor step count makes autograph build one tf.while_loop, not 50 copies.
        return projected_gradient_descent(
            model_fn, xb, epsilon, step_size, tf.constant(steps), np.inf,
            loss_fn=negative_log_likelihood, clip_min=0.0, clip_max=1.0, y=yb,
            rand_init=random_start)

    return _batched(attack, x, y, max(1, batch_size // model_fn.samples))


class BatchedSPSAAdam:
    """SPSA gradient estimates with Adam updates, for many images at once.

    A drop-in `optimizer` for CleverHans' `projected_optimization`, which
    CleverHans' own `SPSAAdam` cannot be on Keras 3 (it passes the removed
    `lr` argument to Keras' Adam) and which handles one image at a time. The
    semantics are CleverHans': `samples` mirrored ±δ·Rademacher perturbations
    per image and step, gradient ≈ mean(loss · Δ) / δ, then an Adam step. The
    samples are evaluated in `chunks` sequential passes to bound memory; the
    chunk estimates are averaged (CleverHans sums them, which Adam's scale
    invariance makes equivalent up to its ε).
    """

    def __init__(self, learning_rate: float = 0.01, delta: float = 0.01, samples: int = 128,
                 chunks: int = 1, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-9):
        if samples < 2 or samples % 2 or samples % (2 * chunks):
            raise ValueError(f"samples must be even and split into {chunks} equal mirrored chunks; got {samples!r}.")
        self.learning_rate, self.delta = learning_rate, delta
        self.half_chunk, self.chunks = samples // (2 * chunks), chunks
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def init_state(self, x):
        return {"t": 0.0, "m": [tf.zeros_like(v) for v in x], "u": [tf.zeros_like(v) for v in x]}

    def _gradient(self, loss_fn, x):
        shape = tf.concat([[self.half_chunk], tf.shape(x)], 0)
        # Extra dimensions so a per-(sample, image) loss broadcasts over pixels.
        loss_shape = tf.concat([[2 * self.half_chunk, tf.shape(x)[0]], tf.ones(tf.rank(x) - 1, tf.int32)], 0)

        def chunk_estimate(total, _):
            delta_x = self.delta * tf.sign(tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype))
            delta_x = tf.concat([delta_x, -delta_x], axis=0)
            losses = tf.reshape(loss_fn(x[None] + delta_x), loss_shape)
            return total + tf.reduce_mean(losses * delta_x, axis=0) / self.delta

        total = tf.foldl(chunk_estimate, tf.range(self.chunks), initializer=tf.zeros_like(x))
        return total / self.chunks

    def minimize(self, loss_fn, x, optim_state):
        t = optim_state["t"] + 1.0
        new_x, m_new, u_new = [], [], []
        for value, m, u in zip(x, optim_state["m"], optim_state["u"]):
            g = self._gradient(loss_fn, value)
            m = self.beta_1 * m + (1.0 - self.beta_1) * g
            u = self.beta_2 * u + (1.0 - self.beta_2) * g * g
            m_hat = m / (1.0 - tf.pow(self.beta_1, t))
            u_hat = u / (1.0 - tf.pow(self.beta_2, t))
            new_x.append(value - self.learning_rate * m_hat / (tf.sqrt(u_hat) + self.epsilon))
            m_new.append(m)
            u_new.append(u)
        return new_x, {"t": t, "m": m_new, "u": u_new}


def _spsa_loss(model_fn: EOT):
    """Untargeted margin loss (CleverHans' `margin_logit_loss`, sign flipped), mean over EOT draws.

    Accepts one batch [B, ...] or a stack of SPSA queries [S, B, ...] (what
    `projected_optimization` passes when the optimizer perturbs a batch) and
    returns one loss per image (and query).
    """
    from cleverhans.tf2.attacks.spsa import margin_logit_loss

    def loss_fn(images, labels):
        query_shape = tf.shape(images)[: tf.rank(images) - tf.rank(labels) - 3]
        flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], 0))
        flat_labels = tf.reshape(tf.broadcast_to(labels, tf.shape(images)[: tf.rank(images) - 3]), [-1])
        draws = model_fn.draws(flat)
        classes = tf.shape(draws)[-1]
        margins = margin_logit_loss(tf.reshape(draws, [-1, classes]),
                                    _tile(flat_labels, model_fn.samples), nb_classes=classes)
        mean_margin = tf.reduce_mean(tf.reshape(margins, [model_fn.samples, -1]), axis=0)
        return -tf.reshape(mean_margin, tf.concat([query_shape, tf.shape(labels)], 0))

    return loss_fn


def spsa(model, x, y, epsilon: float, steps: int = 100, samples: int = 2048,
         learning_rate: float = 0.01, delta: float = 0.01, eot_samples: int = 1,
         early_stop: bool = False, batch_size: int = 100, max_model_batch: int = 16384) -> np.ndarray:
    """The gradient-free SPSA attack (Uesato et al.), batched, with EOT-averaged loss queries.

    Built on CleverHans' `projected_optimization` (random start in the ε-ball,
    projection to the ε-ball and [0, 1] after every step) and
    `margin_logit_loss`, with `BatchedSPSAAdam` as the optimizer. With
    `early_stop` the attack ends once the batch's mean margin loss is
    negative (CleverHans' rule; per image when `batch_size` is 1).
    `max_model_batch` bounds the inputs per forward pass (memory).
    """
    from cleverhans.tf2.attacks.spsa import projected_optimization

    _check_attack_args(x, y, epsilon)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
    model_fn = EOT(model, eot_samples)
    batch_size = max(1, min(batch_size, len(x)))
    per_pass = samples * batch_size * model_fn.samples
    chunks = next(c for c in range(1, samples // 2 + 1)
                  if samples % (2 * c) == 0 and per_pass / c <= max_model_batch or c == samples // 2)
    optimizer = BatchedSPSAAdam(learning_rate, delta, samples, chunks)
    loss_fn = _spsa_loss(model_fn)

    @tf.function
    def attack(xb, yb):
        return projected_optimization(loss_fn, xb, yb, epsilon, steps, optimizer,
                                      clip_min=0.0, clip_max=1.0,
                                      early_stop_loss_threshold=0.0 if early_stop else None)

    return _batched(attack, x, y, batch_size)


# ---------------------------------------------------------------- Auto-PGD (Croce and Hein, 2020)
def _per_draw_loss(name: str):
    """Per-example loss to maximise from per-draw logits [S, B, C], averaged over the S draws."""
    if name not in ("ce", "dlr"):
        raise ValueError(f"Unknown APGD loss {name!r}; expected 'ce' or 'dlr'.")

    def loss(draws, y):
        labels = tf.broadcast_to(tf.cast(y, tf.int32)[None], tf.shape(draws)[:2])
        if name == "ce":
            per_draw = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=draws)
        else:
            # Difference of logits ratio: scale-invariant, so it survives saturated softmaxes.
            true = tf.gather(draws, labels, batch_dims=2)
            top = tf.sort(draws, axis=-1, direction="DESCENDING")
            other = tf.where(tf.equal(tf.argmax(draws, -1, output_type=tf.int32), labels), top[..., 1], top[..., 0])
            per_draw = -(true - other) / (top[..., 0] - top[..., 2] + 1e-12)
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


def _apgd_graph(model_fn: EOT, epsilon: float, steps: int, loss: str, momentum: float, rho: float):
    """The compiled APGD loop for one batch: returns (best adversarial or highest-loss input, fooled)."""
    loss_of = _per_draw_loss(loss)
    checkpoints = apgd_checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[checkpoints] = True
    window = np.zeros(steps + 1, np.float32)
    window[checkpoints] = np.diff(np.concatenate([[0], checkpoints]))

    def evaluate(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            draws = model_fn.draws(x)
            losses = loss_of(draws, y)
            total = tf.reduce_sum(losses)  # a sum: each image's gradient is its own
        fooled = tf.not_equal(tf.argmax(tf.reduce_mean(tf.nn.log_softmax(draws), 0), -1, output_type=tf.int32),
                              tf.cast(y, tf.int32))
        return losses, tape.gradient(total, x), fooled

    def per_image(mask, x):
        return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones(tf.rank(x) - 1, tf.int32)], 0))

    @tf.function
    def attack(x, y):
        project = lambda z: tf.clip_by_value(tf.clip_by_value(z, x - epsilon, x + epsilon), 0.0, 1.0)  # noqa: E731
        x_k = project(x + epsilon * tf.random.uniform(tf.shape(x), -1.0, 1.0))
        loss_k, grad, fooled = evaluate(x_k, y)
        best_adv = tf.where(per_image(fooled, x), x_k, x)
        ever_fooled, x_best, loss_best, grad_best = fooled, x_k, loss_k, grad
        eta = tf.fill(tf.shape(loss_k), 2.0 * epsilon)
        x_prev, increases = x_k, tf.zeros_like(loss_k)
        eta_at_check, best_at_check = eta, loss_best
        for k in tf.range(steps):
            z = project(x_k + per_image(eta, x) * tf.sign(grad))
            weight = tf.where(k == 0, 1.0, momentum)  # the first step is a plain projected step
            x_next = project(x_k + weight * (z - x_k) + (1.0 - weight) * (x_k - x_prev))
            loss_next, grad_next, fooled = evaluate(x_next, y)
            best_adv = tf.where(per_image(fooled & ~ever_fooled, x), x_next, best_adv)
            ever_fooled |= fooled
            increases += tf.cast(loss_next > loss_k, tf.float32)
            improved = loss_next > loss_best
            x_best = tf.where(per_image(improved, x), x_next, x_best)
            grad_best = tf.where(per_image(improved, x), grad_next, grad_best)
            loss_best = tf.where(improved, loss_next, loss_best)
            x_prev, x_k, loss_k, grad = x_k, x_next, loss_next, grad_next
            if tf.gather(is_checkpoint, k + 1):
                # Halve the step where progress stalled, restarting from the best point.
                stalled = ((increases <= rho * tf.gather(window, k + 1))
                           | ((eta == eta_at_check) & (loss_best <= best_at_check)))
                eta = tf.where(stalled, eta / 2.0, eta)
                x_k = tf.where(per_image(stalled, x), x_best, x_k)
                grad = tf.where(per_image(stalled, x), grad_best, grad)
                increases, eta_at_check, best_at_check = tf.zeros_like(increases), eta, loss_best
        return tf.where(per_image(ever_fooled, x), best_adv, x_best), ever_fooled

    return attack


def apgd(model, x, y, epsilon: float, steps: int = 100, loss: str = "ce", restarts: int = 1,
         eot_samples: int = 1, momentum: float = 0.75, rho: float = 0.75, batch_size: int = 500,
         seed: int | None = None) -> np.ndarray:
    """Auto-PGD (Croce and Hein, 2020), untargeted L∞, with EOT gradients on random models.

    Step size 2ε halved at the paper's checkpoints when fewer than `rho` of
    the steps since the last checkpoint raised the loss or the best loss has
    not moved (then restarting from the best point); momentum 0.75. `loss` is
    "ce" (cross-entropy) or "dlr" (difference of logits ratio), both averaged
    over `eot_samples` noise draws, as is the prediction that decides success.
    Restarts run on the images not yet fooled. Returns, per image, the first
    misclassified input found, else the one with the highest loss.
    """
    _check_attack_args(x, y, epsilon)
    for name, value in (("steps", steps), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    _per_draw_loss(loss)
    if seed is not None:
        tf.random.set_seed(seed)
    model_fn = EOT(model, eot_samples)
    attack = _apgd_graph(model_fn, epsilon, steps, loss, momentum, rho)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    x_adv, fooled = x.copy(), np.zeros(len(x), bool)
    step = max(1, batch_size // model_fn.samples)
    for _ in range(restarts):
        todo = np.flatnonzero(~fooled)
        for i in range(0, len(todo), step):
            idx = todo[i:i + step]
            adv, hit = attack(tf.constant(x[idx]), tf.constant(y[idx]))
            x_adv[idx], fooled[idx] = adv.numpy(), hit.numpy()
    return x_adv


# ---------------------------------------------------------------- Square (Andriushchenko et al., 2020)
def _square_fraction(p_init: float, query, queries: int):
    """The paper's schedule: the square's pixel fraction halves at fixed fractions of a 10,000-query run."""
    boundaries = tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], tf.float32)
    halvings = tf.reduce_sum(tf.cast(tf.cast(query, tf.float32) * 10000.0 / queries > boundaries, tf.float32))
    return p_init / tf.pow(2.0, halvings)


def _margin(model_fn: EOT):
    """log p(y) - max other log p, of the EOT mean log-probabilities: > 0 while the image is classified right."""
    # Not SPSA's loss (per-draw logit margins, averaged): tried, and on a very noisy model it lost the
    # whole benefit of EOT for Square (accuracy 0.745 with 8 draws vs 0.729 with 1; 0.56 vs 0.66 here).
    def margin(x, y):
        logp = model_fn(x)
        true = tf.gather(logp, y, batch_dims=1)
        others = tf.where(tf.one_hot(y, tf.shape(logp)[-1]) > 0, -np.inf, logp)
        return true - tf.reduce_max(others, axis=-1)

    return margin


def _square_graph(model_fn: EOT, epsilon: float, queries: int, p_init: float):
    margin_of = _margin(model_fn)

    @tf.function
    def attack(x, y):
        batch, height, width = tf.unstack(tf.shape(x)[:3])
        channels = x.shape[-1]  # static, so the loop keeps x_best's shape
        signs = lambda shape: tf.sign(tf.random.uniform(shape, -1.0, 1.0))  # noqa: E731
        # Start: vertical stripes of ±ε, one sign per column and channel.
        delta = epsilon * signs([batch, 1, width, channels])
        x_best = tf.clip_by_value(x + delta, 0.0, 1.0)
        margin = margin_of(x_best, y)
        rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]
        for query in tf.range(1, queries):
            if tf.reduce_all(margin <= 0.0):
                break
            side = tf.cast(tf.round(tf.sqrt(_square_fraction(p_init, query, queries)
                                            * tf.cast(height * width, tf.float32))), tf.int32)
            side = tf.clip_by_value(side, 1, height - 1)
            top = tf.random.uniform([batch, 1, 1], 0, height - side + 1, tf.int32)
            left = tf.random.uniform([batch, 1, 1], 0, width - side + 1, tf.int32)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            # A fresh ±ε per channel over the square, for the images not yet fooled.
            candidate = tf.where(window[..., None], epsilon * signs([batch, 1, 1, channels]), x_best - x)
            x_new = tf.clip_by_value(x + candidate, 0.0, 1.0)
            margin_new = margin_of(x_new, y)
            accept = (margin_new < margin) & (margin > 0.0)
            # Static shapes kept for the loop (a batch of 1 would otherwise broadcast to None).
            x_best = tf.ensure_shape(tf.where(accept[:, None, None, None], x_new, x_best), x.shape)
            margin = tf.ensure_shape(tf.where(accept, margin_new, margin), margin.shape)
        return x_best

    return attack


def square(model, x, y, epsilon: float, queries: int = 5000, p_init: float = 0.8, eot_samples: int = 1,
           batch_size: int = 500, seed: int | None = None) -> np.ndarray:
    """The Square attack (Andriushchenko et al., 2020), L∞, untargeted, score-based and gradient-free.

    Random ±ε vertical stripes to start, then one random square window per
    query (its side shrinking on the paper's schedule from `p_init` of the
    image) set to a fresh ±ε per channel, kept only if it lowers the margin
    loss. Every score is the EOT mean over `eot_samples` noise draws, so on a
    random model the greedy acceptance follows the expected score and not one
    draw's luck. Images already misclassified stop moving; the batch stops
    when all are. Expects NHWC images.
    """
    _check_attack_args(x, y, epsilon)
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ValueError(f"queries must be an integer >= 1; got {queries!r}.")
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must lie in (0, 1]; got {p_init!r}.")
    if np.ndim(x) != 4:
        raise ValueError(f"square expects NHWC image batches; got shape {np.shape(x)}.")
    if seed is not None:
        tf.random.set_seed(seed)
    model_fn = EOT(model, eot_samples)
    return _batched(_square_graph(model_fn, epsilon, queries, p_init), x, y,
                    max(1, batch_size // model_fn.samples))


# ---------------------------------------------------------------- the AutoAttack-style ensemble
def _classified_right(model_fn: EOT, x, y, batch_size: int = 500) -> np.ndarray:
    """Per image: does the EOT prediction (mean log-probabilities over the draws) name the label?"""
    step = max(1, batch_size // model_fn.samples)
    predictions = [np.argmax(model_fn(tf.constant(x[i:i + step])).numpy(), -1) for i in range(0, len(x), step)]
    return np.concatenate(predictions) == y if predictions else np.zeros(0, bool)


def autoattack(model, x, y, epsilon: float, version: str | None = None, steps: int = 100, queries: int = 5000,
               eot_samples: int = 20, batch_size: int = 500, seed: int | None = 0):
    """An AutoAttack-style ensemble (Croce and Hein, 2020) for Keras models; returns `(x_adv, report)`.

    `standard` runs APGD-CE, APGD-DLR and Square (`queries`) in turn, each on
    the images the previous ones left classified right; `rand`, the default
    for models with a random layer, runs APGD-CE and APGD-DLR with
    `eot_samples` EOT draws (AutoAttack's 20 by default). An image counts as
    right when the EOT prediction names its label. `x_adv` holds, per image,
    the first input that broke it, else the last attempt; `report` gives the
    clean and per-stage robust accuracy and `broken_by` (the attack's name,
    "clean" if misclassified from the start, None if it survived).
    """
    _check_attack_args(x, y, epsilon)
    version = version or ("rand" if has_random_layer(model) else "standard")
    if version not in ("standard", "rand"):
        raise ValueError(f"Unknown AutoAttack version {version!r}; expected 'standard' or 'rand'.")
    eot = eot_samples if version == "rand" and has_random_layer(model) else 1
    stages = {"apgd-ce": lambda xs, ys: apgd(model, xs, ys, epsilon, steps, "ce", eot_samples=eot,
                                               batch_size=batch_size, seed=seed),
              "apgd-dlr": lambda xs, ys: apgd(model, xs, ys, epsilon, steps, "dlr", eot_samples=eot,
                                                batch_size=batch_size, seed=seed)}
    if version == "standard":
        stages["square"] = lambda xs, ys: square(model, xs, ys, epsilon, queries, eot_samples=eot,
                                                 batch_size=batch_size, seed=seed)
    model_fn = EOT(model, eot)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    x_adv, right = x.copy(), _classified_right(model_fn, x, y, batch_size)
    broken_by = np.where(right, None, "clean").astype(object)
    report = {"version": version, "eot_samples": eot, "clean": float(right.mean()), "after": {}}
    for name, run in stages.items():
        idx = np.flatnonzero(right)
        if len(idx):
            x_adv[idx] = run(x[idx], y[idx])
            broken = idx[~_classified_right(model_fn, x_adv[idx], y[idx], batch_size)]
            broken_by[broken], right[broken] = name, False
        report["after"][name] = float(right.mean())
    report["robust_accuracy"] = float(right.mean())
    report["broken_by"] = broken_by.tolist()
    return x_adv, report


def art_classifier(model, draws: int = 1):
    """`model` as an IBM ART `TensorFlowV2Classifier`, its logits averaged over `draws` noise draws.

    For checking our attacks against a third party's on the same model (ART's
    attacks have no EOT: averaging the logits is the closest they get).
    Needs `adversarial-robustness-toolbox` (the test extra).
    """
    from art.estimators.classification import TensorFlowV2Classifier

    classes = model.output_shape[-1]

    def averaged_logits(x, training=False):
        logits = model(_tile(x, draws), training=False)
        return tf.reduce_mean(tf.reshape(logits, [draws, -1, classes]), axis=0)

    return TensorFlowV2Classifier(model=averaged_logits, nb_classes=classes, input_shape=model.input_shape[1:],
                                  clip_values=(0.0, 1.0),
                                  loss_object=keras.losses.CategoricalCrossentropy(from_logits=True))


ATTACKS = {
    "pgd": pgd,
    "pgd-no-eot": pgd,  # one noise draw per step whatever the budget's EOT: shows what EOT adds
    "spsa": spsa,
    "apgd-ce": functools.partial(apgd, loss="ce"),
    "apgd-dlr": functools.partial(apgd, loss="dlr"),
    "square": square,
    "autoattack": autoattack,
}
GRADIENT_FREE = ("spsa", "square")


def get_attack(name: str):
    """The attack function named `name`."""
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; expected one of {sorted(ATTACKS)}.")
    return ATTACKS[name]
