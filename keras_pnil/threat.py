"""The threat model: the norm of the perturbation ball, its radius and the range of the model's inputs.

One `ThreatModel(norm, epsilon, bounds)` is resolved once (by the plan, or by
an attack's public entry) and passed on; every attack takes its projection,
step direction, random start and distance from it, so no attack branches on
the norm. A `Norm` holds the per-norm mathematics:

- `project(delta, epsilon, low, high)`: the exact Euclidean projection of a
  perturbation onto the ε-ball intersected with the box `low <= delta <= high`
  (the box is the input range seen from the image, `[lo - x, hi - x]`);
- `ascent(grad)`: the steepest-ascent direction of unit norm (sign for L∞,
  the normalised gradient for L2; L1's is sparse, see `L1Norm.ascent`);
- `hyperplane(w, c, low, high)`: the smallest perturbation with `w·δ = c`
  inside the box (FAB's step);
- `distance(delta)`: per-image norms.

All tensors are [batch, features] inside the norms; `ThreatModel` flattens.

Example:
    >>> threat = threat_model("l2", 0.5, bounds=(0.0, 1.0))
    >>> threat.describe()
    'L2 ε=0.5 (inputs in [0, 1])'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_pnil.validation import check_bounds, check_choice, check_epsilon

# Bisection steps of the projections that search a scalar (L2's scale, L1's threshold): 2^-40 of the range.
BISECTION_STEPS = 40
DEFAULT_BOUNDS = (0.0, 1.0)


def _flat(t):
    return tf.reshape(t, [tf.shape(t)[0], -1])


def _bisect(too_far, low, high, steps: int = BISECTION_STEPS):
    """Per row, the smallest value in [low, high] where `too_far(value)` turns False (it is monotone)."""
    for _ in range(steps):
        middle = (low + high) / 2
        far = too_far(middle)
        low, high = tf.where(far, middle, low), tf.where(far, high, middle)
    return high


class Norm:
    """The mathematics of one Lp ball; subclasses are `LinfNorm`, `L2Norm`, `L1Norm` (see `NORMS`)."""

    name: str = ""
    title: str = ""
    p: float = np.inf

    def distance(self, delta):
        """Per-row Lp norm of a [batch, features] tensor."""
        raise NotImplementedError

    def numpy_distance(self, delta: np.ndarray) -> np.ndarray:
        """Per-image Lp norms of a NumPy batch (any shape)."""
        return np.linalg.norm(np.asarray(delta, np.float64).reshape(len(delta), -1), ord=self.p, axis=1)

    def project(self, delta, epsilon: float, low, high):
        """The closest point to `delta` (rows) with norm <= ε and `low <= delta <= high` (0 lies in the box)."""
        raise NotImplementedError

    def project_point(self, z, x, epsilon: float, bounds):
        """`z` (any shape) moved to the closest point of the ε-ball around `x` inside `bounds`."""
        low, high = _flat(bounds[0] - x), _flat(bounds[1] - x)
        return x + tf.reshape(self.project(_flat(z - x), epsilon, low, high), tf.shape(x))

    def ascent(self, grad, sparsity=None):
        """The unit-norm direction of steepest ascent for a gradient (rows)."""
        raise NotImplementedError

    def random_delta(self, rng, shape, epsilon: float):
        """A random perturbation of norm ε (projected into the box by the caller)."""
        raise NotImplementedError

    def hyperplane(self, w, c, low, high):
        """Per row, the smallest-norm δ with w·δ = c and low <= δ <= high (as close as the box allows)."""
        raise NotImplementedError

    def cube_radius(self, features: int, half_width: float) -> float:
        """The norm of a perturbation of `half_width` on every one of `features` pixels."""
        return float(half_width * features ** (1.0 / self.p)) if np.isfinite(self.p) else float(half_width)


class LinfNorm(Norm):
    name, title, p = "linf", "L∞", np.inf

    def distance(self, delta):
        return tf.reduce_max(tf.abs(delta), axis=1)

    def project(self, delta, epsilon, low, high):
        return tf.clip_by_value(tf.clip_by_value(delta, -epsilon, epsilon), low, high)

    def project_point(self, z, x, epsilon, bounds):
        # Separable: clip to the ball, then to the range, pixel by pixel (no reshape, any shape).
        return tf.clip_by_value(tf.clip_by_value(z, x - epsilon, x + epsilon), *bounds)

    def ascent(self, grad, sparsity=None):
        return tf.sign(grad)

    def random_delta(self, rng, shape, epsilon):
        return rng.uniform(shape, -epsilon, epsilon)

    def hyperplane(self, w, c, low, high):
        # For a radius t the values of w·δ reachable with |δ| <= t inside the box form an interval that widens
        # with t: bisection finds the smallest t that reaches c; the extreme point there, scaled onto w·δ = c.
        toward_up = tf.equal(w > 0, (c > 0)[:, None])

        def extreme(radius):
            delta = tf.where(toward_up, tf.minimum(radius[:, None], high), tf.maximum(-radius[:, None], low))
            return delta, tf.reduce_sum(w * delta, axis=1)

        reach = tf.reduce_max(tf.maximum(high, -low), axis=1)
        radius = _bisect(lambda t: tf.abs(extreme(t)[1]) < tf.abs(c), tf.zeros_like(c), reach)
        delta, reached = extreme(radius)
        return delta * tf.minimum(tf.math.divide_no_nan(tf.abs(c), tf.abs(reached)), 1.0)[:, None]


class L2Norm(Norm):
    name, title, p = "l2", "L2", 2.0

    def distance(self, delta):
        return tf.sqrt(tf.reduce_sum(tf.square(delta), axis=1))

    def project(self, delta, epsilon, low, high):
        # KKT: the projection is clip(s·δ, low, high) for the largest s in [0, 1] whose norm is <= ε
        # (ball first and box second is not the projection onto their intersection).
        def clipped(scale):
            return tf.clip_by_value(scale[:, None] * delta, low, high)

        one = tf.ones_like(delta[:, 0])
        inside = self.distance(clipped(one)) <= epsilon
        shrink = _bisect(lambda t: self.distance(clipped(1.0 - t)) > epsilon, tf.zeros_like(one), one)
        scale = tf.where(inside, 1.0, 1.0 - shrink)
        return clipped(scale)

    def ascent(self, grad, sparsity=None):
        return grad / (self.distance(grad)[:, None] + 1e-12)

    def random_delta(self, rng, shape, epsilon):
        noise = _flat(rng.normal(shape))
        return tf.reshape(epsilon * self.ascent(noise), shape)

    def hyperplane(self, w, c, low, high):
        # KKT: δ = clip(λ·w, low, high) for the scalar λ (of c's sign) that reaches c; w·δ grows with |λ|.
        sign = tf.sign(c)[:, None]

        def reached(lam):
            return tf.reduce_sum(w * tf.clip_by_value(sign * lam[:, None] * w, low, high), axis=1)

        # The unconstrained answer |c|/‖w‖² is a lower bound (clipping only loses reach); every coordinate
        # saturates at max capacity / min |w|. The search runs on log λ: the range may span many decades.
        floor = tf.maximum(tf.math.divide_no_nan(tf.abs(c), tf.reduce_sum(tf.square(w), axis=1)), 1e-30)
        ceiling = tf.reduce_max(tf.maximum(high, -low), axis=1) / (tf.reduce_min(
            tf.where(tf.abs(w) > 0, tf.abs(w), np.inf), axis=1) + 1e-30)
        ceiling = tf.clip_by_value(ceiling, floor, 1e30)
        log_lam = _bisect(lambda t: tf.abs(reached(tf.exp(t))) < tf.abs(c), tf.math.log(floor),
                          tf.math.log(ceiling), steps=60)
        lam = tf.exp(log_lam)
        delta = tf.clip_by_value(sign * lam[:, None] * w, low, high)
        return delta * tf.minimum(tf.math.divide_no_nan(tf.abs(c), tf.abs(reached(lam))), 1.0)[:, None]


class L1Norm(Norm):
    name, title, p = "l1", "L1", 1.0

    def distance(self, delta):
        return tf.reduce_sum(tf.abs(delta), axis=1)

    def project(self, delta, epsilon, low, high):
        # KKT: the projection is clip(soft-threshold(δ, τ), low, high) for the smallest τ >= 0 whose
        # norm is <= ε (Croce & Hein 2021, "Mind the box": L1 ball and box together).
        def shrunk(tau):
            return tf.clip_by_value(tf.sign(delta) * tf.nn.relu(tf.abs(delta) - tau[:, None]), low, high)

        zero = tf.zeros_like(delta[:, 0])
        tau = _bisect(lambda t: self.distance(shrunk(t)) > epsilon, zero, tf.reduce_max(tf.abs(delta), axis=1))
        return tf.where((self.distance(shrunk(zero)) <= epsilon)[:, None], shrunk(zero), shrunk(tau))

    def ascent(self, grad, sparsity=None):
        """The sign of the `sparsity` fraction (per row; default all) of largest |grad|, of L1 norm 1.

        APGD-L1's sparse step: only the k largest gradient coordinates move, k
        adapted by the attack (Croce & Hein 2021).
        """
        features = tf.shape(grad)[1]
        if sparsity is None:
            keep = tf.ones_like(grad)
        else:
            ranked = tf.sort(tf.abs(grad), axis=1)
            k = tf.cast(tf.clip_by_value((1.0 - sparsity) * tf.cast(features, tf.float32), 0.0,
                                         tf.cast(features - 1, tf.float32)), tf.int32)
            threshold = tf.gather(ranked, k, batch_dims=1)
            keep = tf.cast(tf.abs(grad) >= threshold[:, None], grad.dtype)
        signs = tf.sign(grad) * keep
        return signs / (self.distance(signs)[:, None] + 1e-10)

    def random_delta(self, rng, shape, epsilon):
        noise = _flat(rng.normal(shape))
        return tf.reshape(epsilon * noise / (self.distance(noise)[:, None] + 1e-12), shape)

    def hyperplane(self, w, c, low, high):
        # Greedy is optimal for a linear constraint under L1: fill the coordinates with the largest |w| to
        # their box capacity (in the direction that moves w·δ towards c) until c is reached.
        up = tf.equal(w > 0, (c > 0)[:, None])
        capacity = tf.where(up, high, -low)  # >= 0: how far each coordinate can move the helpful way
        gain = tf.abs(w) * capacity
        order = tf.argsort(tf.abs(w), axis=1, direction="DESCENDING")
        sorted_gain = tf.gather(gain, order, batch_dims=1)
        before = tf.cumsum(sorted_gain, axis=1, exclusive=True)
        need = tf.abs(c)[:, None]
        fraction = tf.clip_by_value(tf.math.divide_no_nan(need - before, sorted_gain), 0.0, 1.0)
        fraction = tf.where(before >= need, 0.0, fraction)
        inverse = tf.argsort(order, axis=1)
        fraction = tf.gather(fraction, inverse, batch_dims=1)
        return tf.where(up, 1.0, -1.0) * fraction * capacity


NORMS: dict[str, Norm] = {norm.name: norm for norm in (LinfNorm(), L2Norm(), L1Norm())}


def get_norm(name: str) -> Norm:
    """The `Norm` named `name` ("linf", "l2" or "l1")."""
    check_choice("norm", name, NORMS)
    return NORMS[name]


@dataclass(frozen=True)
class ThreatModel:
    """The ε-ball of `norm` around each image, inside the model's input range `bounds`.

    Attributes:
        norm: The `Norm`.
        epsilon: The radius, in the units of the model's inputs.
        bounds: (lo, hi): the range of the model's inputs (pixels in [0, 1], [0, 255], [-1, 1], ...).
    """

    norm: Norm
    epsilon: float
    bounds: tuple[float, float] = DEFAULT_BOUNDS

    def project(self, z, x):
        """`z` moved to the closest point of the ε-ball around `x` inside the bounds."""
        return self.norm.project_point(z, x, self.epsilon, self.bounds)

    def ascent(self, grad, sparsity=None):
        """The norm's unit steepest-ascent direction, shaped like `grad`."""
        return tf.reshape(self.norm.ascent(_flat(grad), sparsity), tf.shape(grad))

    def random_start(self, rng, x):
        """A random point of the ball around `x` inside the bounds, drawn from `rng` (`Draws` or a generator)."""
        return self.project(x + self.norm.random_delta(rng, tf.shape(x), self.epsilon), x)

    def clip(self, z):
        return tf.clip_by_value(z, *self.bounds)

    def distance(self, z, x):
        """Per-image norms of `z - x`."""
        return self.norm.distance(_flat(z - x))

    @property
    def width(self) -> float:
        return self.bounds[1] - self.bounds[0]

    def describe(self) -> str:
        """E.g. `L2 ε=0.5 (inputs in [0, 1])`: ε in the units of the model's inputs, whose range is named."""
        lo, hi = self.bounds
        return f"{self.norm.title} ε={self.epsilon:.4g} (inputs in [{lo:g}, {hi:g}])"

    def to_dict(self) -> dict:
        return {"norm": self.norm.name, "epsilon": self.epsilon, "bounds": list(self.bounds)}


def threat_model(norm: str | Norm | ThreatModel = "linf", epsilon: float | None = None,
                 bounds=DEFAULT_BOUNDS) -> ThreatModel:
    """A checked `ThreatModel`: `norm` one of `NORMS`, `bounds` (lo, hi) with lo < hi, ε valid for both.

    Example:
        >>> threat_model("linf", 8 / 255).bounds
        (0.0, 1.0)
    """
    if isinstance(norm, ThreatModel):
        return norm
    bounds = check_bounds(bounds)
    name = norm.name if isinstance(norm, Norm) else norm
    norm = get_norm(name)
    return ThreatModel(norm, check_epsilon(epsilon, norm=norm.name, bounds=bounds), bounds)
