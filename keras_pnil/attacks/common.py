"""What every attack shares: argument checks (and the threat model), stateless draws from each call's seed, the
lanes (a batch attacked in slices side by side), batching."""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import keras
import numpy as np
import tensorflow as tf

from keras_pnil.attacks import lanes
from keras_pnil.attacks.eot import EOT
from keras_pnil.threat import DEFAULT_BOUNDS, ThreatModel, threat_model
from keras_pnil.validation import check_count, check_inputs

DEFAULT_BATCH_SIZE = 256  # images per batch; the model sees batch × EOT draws at once
# The evaluation's batches (`attack_batch_size`): on a deterministic model, as many images as hold about a
# million input values, at most `MAX_BATCH_SIZE` (1,024 MNIST images, 256 CIFAR-10 ones). An attack's loop
# pays a fixed cost per step whatever the batch, so on small inputs larger batches run it fewer times
# (APGD-CE on 1,000 MNIST images: 13 s in batches of 256, 7 s in one, docs/benchmarks.md).
BATCH_VALUES, MAX_BATCH_SIZE = 2 ** 20, 1024
# Target classes of the targeted attacks (APGD-T, FAB-T): AutoAttack's nine classes ranked after the label.
TARGET_CLASSES = 9

# Set while an ensemble runs its stages on images and labels it has already checked.
_INPUTS_CHECKED = contextvars.ContextVar("keras_pnil_inputs_checked", default=False)


def check_attack_args(model, x, y, epsilon: float, batch_size: int, *, norm: str = "linf", bounds=DEFAULT_BOUNDS,
                      attack: str = "the attack", norms=("linf",)) -> tuple[np.ndarray, np.ndarray, ThreatModel]:
    """Validates the arguments every attack takes; returns float32 images, int64 labels and the `ThreatModel`.

    `norms` are the norms the attack has a version for: any other is an error
    naming them (an attack never silently runs its L∞ version). The images and
    labels go through `check_inputs` (against `model`, within `bounds`) once,
    at the public entry: not again in an ensemble's stages (see `inputs_checked`).
    """
    threat = threat_model(norm, epsilon, bounds)
    if threat.norm.name not in norms:
        raise ValueError(f"{attack} has no {threat.norm.title} version (norm={threat.norm.name!r}); it has "
                         f"{', '.join(norms)}. Choose another attack or norm.")
    check_count("batch_size", batch_size)
    if _INPUTS_CHECKED.get():
        return np.asarray(x, np.float32), np.asarray(y, np.int64), threat
    x, y = check_inputs(model, x, y, what="images to attack", bounds=threat.bounds)
    return x, y, threat


@contextlib.contextmanager
def inputs_checked():
    """Within this context, attacks trust their images and labels: an ensemble checked them at its entry."""
    token = _INPUTS_CHECKED.set(True)
    try:
        yield
    finally:
        _INPUTS_CHECKED.reset(token)


def _seed_value(seed: int | None) -> int:
    """`seed` as a graph's seed takes it (an int64 ≥ 0): as it is below 2^63, larger ones hashed; None: a fresh one."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    seed = check_count("seed", seed, minimum=0)
    return seed if seed < 2 ** 63 else int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1)


# Compiled attack graphs live on the model they attack, so repeated calls with the same settings and
# shapes (an attack run every epoch, batch after batch, restart after restart) trace once, and the graphs
# go with the model. (A global cache keyed weakly by model would keep every model alive: its graphs
# refer to it.) Set past Keras' attribute tracking, which would try to track the dict as state.
_CACHE = "_keras_pnil_attack_graphs"
# The device an attack runs on (`placed`), for the lanes' threads, which do not inherit TensorFlow's scope.
_DEVICE = contextvars.ContextVar("keras_pnil_attack_device", default=None)
_POOL: list = []  # the lanes' threads, made on first use (under `_POOL_LOCK`: replicas' threads share them)
_POOL_LOCK = threading.Lock()


class Draws:
    """An attack graph's random draws, all from the seed its call is given (TensorFlow's stateless draws).

    A drop-in for the `tf.random.Generator` methods the attacks use (`uniform`,
    `normal`), each draw from its own key; `at(k)` gives iteration `k` of a
    loop its own draws (a loop's body is traced once: its draws must fold in
    the iteration). A graph holds no generator, so one traced graph can serve
    calls from several threads at once, each call's draws its own.

    Example:
        >>> draws = Draws(tf.constant([0, 1], tf.int64))
        >>> draws.uniform([2], 0.0, 1.0).shape, draws.at(3).normal([1]).shape
        (TensorShape([2]), TensorShape([1]))
    """

    def __init__(self, seed):
        self.seed, self._drawn = seed, 0

    def _key(self):
        self._drawn += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self._drawn)

    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32):
        return tf.random.stateless_uniform(shape, self._key(), minval, maxval, dtype)

    def normal(self, shape, dtype=tf.float32):
        return tf.random.stateless_normal(shape, self._key(), dtype=dtype)

    def at(self, k) -> Draws:
        return Draws(tf.random.experimental.stateless_fold_in(self._key(), k))


SEED_SPEC = tf.TensorSpec((2,), tf.int64)  # the last input of every attack graph: its call's seed (see `Draws`)


@contextlib.contextmanager
def placed(device: str | None):
    """Runs the attacks within on `device` (None: where TensorFlow places them), their lanes' threads too (a
    `tf.device` scope of the caller's own stays in the caller's thread: the lanes, on a machine without a GPU,
    run where TensorFlow places them, on its CPU)."""
    token = _DEVICE.set(device)
    try:
        with tf.device(device) if device else contextlib.nullcontext():
            yield
    finally:
        _DEVICE.reset(token)


def _on_device(graph, args):
    device = _DEVICE.get()
    with tf.device(device) if device else contextlib.nullcontext():
        return graph(*args)


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:  # enough threads for the lanes of every replica's thread
            _POOL.append(ThreadPoolExecutor(max(lanes.LANES, os.cpu_count() or 1),
                                            thread_name_prefix="keras-pnil-lane"))
        return _POOL[0]


class SeededGraph:
    """A compiled attack graph `(inputs..., seed) → per-image outputs`, called as `(inputs...)`: call n of
    an attack seeded s gives slice i of its batch the seed (s, n · `lanes.LANES` + i). Its inputs with an open
    first dimension are the batch; the others (e.g. APGD's loss switch) go whole to every slice."""

    def __init__(self, graph, seed: int, slices: int):
        self.graph, self.seed, self.slices, self.calls = graph, seed, slices, 0
        self._batched = [spec.shape.rank and spec.shape[0] is None for spec in graph.input_signature[:-1]]

    def __call__(self, *args):
        call, self.calls = self.calls, self.calls + 1
        n = int(next(a for a, batched in zip(args, self._batched, strict=True) if batched).shape[0])
        cuts = sorted({n * i // self.slices for i in range(self.slices + 1)})
        calls = [self._slice(args, lo, hi, call * lanes.LANES + i)
                 for i, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False))]
        if len(calls) <= 1:
            return self.graph(*(calls[0] if calls else self._slice(args, 0, n, call * lanes.LANES)))
        futures = [_pool().submit(contextvars.copy_context().run, _on_device, self.graph, c) for c in calls]
        wait(futures)  # every lane ends before this call does, the failed one's partner too
        parts = [future.result() for future in futures]
        return tf.nest.map_structure(lambda *slices: tf.concat(slices, 0), *parts)

    def _slice(self, args, lo: int, hi: int, stream: int) -> tuple:
        """Images lo to hi of the batch inputs, the other inputs whole, and the seed (seed, stream)."""
        return (*(a[lo:hi] if batched else a for a, batched in zip(args, self._batched, strict=True)),
                tf.constant([self.seed, stream], tf.int64))


def compiled(model: keras.Model, key: tuple, build, seed: int | None, *, sliced: bool = True) -> SeededGraph:
    """The attack graph `build()` for `model` and `key`, built once, as a `SeededGraph` of `seed`.

    `build()` returns a `tf.function` whose last input is its call's seed
    (`SEED_SPEC`; its draws come from `Draws(seed)`), so a cached graph gives
    exactly what a fresh one would. It never reads or resets TensorFlow's
    global seed. `sliced` (on a deterministic model): each batch is attacked in
    `lanes.count()` slices side by side (`attacks.lanes`); never on a random
    model, whose noise layers draw from generators the slices would share.
    """
    graphs = getattr(model, _CACHE, None)
    if graphs is None:
        graphs = {}
        object.__setattr__(model, _CACHE, graphs)
    if key not in graphs:
        graphs[key] = build()
    return SeededGraph(graphs[key], _seed_value(seed), lanes.count() if sliced else 1)


# Whether attacks draw a progress bar over their batches (the evaluate command turns them on).
_PROGRESS = contextvars.ContextVar("keras_pnil_progress_bars", default=False)


@contextlib.contextmanager
def progress_bars(enabled: bool = True):
    """Within this context, every attack shows a `keras.utils.Progbar` over the images it attacks."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def batches(indices, batch_size: int, label: str):
    """Yields `indices` in slices of `batch_size`, with a progress bar under `progress_bars()`."""
    indices = np.asarray(indices)
    bar = None
    if _PROGRESS.get() and len(indices):
        print(f"  {label}: {len(indices)} images", flush=True)
        bar = keras.utils.Progbar(len(indices), unit_name="image")
    for i in range(0, len(indices), batch_size):
        yield indices[i:i + batch_size]
        if bar is not None:
            bar.add(len(indices[i:i + batch_size]))


def batch_signature(x, label_vectors: int = 1) -> list:
    """The input signature of an attack graph: any number of images shaped like `x`'s, and int32 vectors.

    With the batch dimension left open, one trace serves every batch size:
    the last, smaller batch and the shrinking sets of images still standing.
    """
    return [tf.TensorSpec((None, *np.shape(x)[1:]), tf.float32), *[tf.TensorSpec((None,), tf.int32)] * label_vectors]


def graph_loop(step, steps, *state, first: int = 0, done=None) -> tuple:
    """`state ← step(k, *state)[1:]` for k = first … steps − 1 (`step` returns k + 1 first), as one
    `tf.while_loop`, stopping early once `done(*state)` holds (a scalar bool); returns the final state.

    The attack graphs are written without autograph (`tf.function(autograph=False)`), as Keras' own train
    and predict steps are: converting their source cost 1–2 s a graph on this project's CPU
    (docs/benchmarks.md), and a model that Keras itself can run needs no conversion here either.

    Example:
        >>> graph_loop(lambda k, total: (k + 1, total + k), 4, tf.constant(0))[0].numpy()
        6
    """
    def running(k, *state):
        return k < steps if done is None else (k < steps) & ~done(*state)

    return tuple(tf.while_loop(running, step, (tf.constant(first), *state))[1:])


def run_batched(attack, x, y, batch_size: int, label: str) -> np.ndarray:
    """Applies a compiled attack `(x, y) -> x_adv` to `x` in batches of `batch_size` images."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    parts = [attack(tf.constant(x[idx]), tf.constant(y[idx])).numpy()
             for idx in batches(np.arange(len(x)), batch_size, label)]
    return np.concatenate(parts) if parts else x.copy()


def attack_batch_size(image_shape, eot_samples: int) -> int:
    """Images per batch for an attack on images shaped `image_shape` with `eot_samples` draws per score:
    `DEFAULT_BATCH_SIZE` on a random model (the model already sees the batch `eot_samples` times over), else
    the largest power of two whose batch holds at most `BATCH_VALUES` input values, between
    `DEFAULT_BATCH_SIZE` and `MAX_BATCH_SIZE`.

    Example:
        >>> attack_batch_size((28, 28, 1), 1), attack_batch_size((32, 32, 3), 1), attack_batch_size((28, 28, 1), 20)
        (1024, 256, 256)
    """
    if eot_samples > 1:
        return DEFAULT_BATCH_SIZE
    fits = BATCH_VALUES // max(int(np.prod(image_shape)), 1)
    return int(min(max(2 ** int(np.log2(max(fits, 1))), DEFAULT_BATCH_SIZE), MAX_BATCH_SIZE))


def per_image(mask, x):
    """A per-image mask or value shaped to broadcast over the pixels of `x`."""
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones(tf.rank(x) - 1, tf.int32)], 0))


def eot_scores(model_fn: EOT, x, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """The EOT log-probabilities of `x`, computed in batches, as a NumPy array [images, classes]."""
    parts = [model_fn(tf.constant(np.asarray(x[i:i + batch_size], np.float32))).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def target_classes(model_fn: EOT, x, targets: int, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Per image, the classes its clean EOT prediction ranks 2nd to `targets + 1`-th: [images, targets].

    The targets of APGD-T and FAB-T (AutoAttack's); at most the number of classes - 1.
    """
    ranked = np.argsort(-eot_scores(model_fn, x, batch_size), axis=1, kind="stable").astype(np.int32)
    return ranked[:, 1:targets + 1]


def true_class_scores(model_fn: EOT, x, y, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Per image, from one pass: is the EOT prediction right, and the EOT loss -log p(label)."""
    log_probs, labels = eot_scores(model_fn, x, batch_size), np.asarray(y, np.int64)
    return log_probs.argmax(-1) == labels, -np.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def classified_right(model_fn: EOT, x, y, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Per image: does the EOT prediction (mean log-probabilities over the draws) name the label?"""
    return true_class_scores(model_fn, x, y, batch_size)[0]
