"""Evaluation across devices and machines: an attack's images, in chunks of four attack batches, dealt to one
model copy per device.

Attacks are per image and independent, so the data-parallel scheme is to
split an attack's images, not its computation: chunk `c` is one attack call on
`CHUNK` images (four batches of the attack), run by replica `c mod R` on its
device, in a thread of its own (as `tf.distribute.MirroredStrategy` runs its
replicas), on its copy of the model. Every random draw of a chunk (the
attack's starts, restarts and Square's windows; the model's noise: a PNIL, EOT)
comes from that chunk's own seeds, so the adversarial images do not depend on
the number of replicas, only on the plan's seed: one device gives exactly what
several give (bit for bit on CPUs, whose replicas cut each batch into the same
lanes, `attacks.common.LANES`, in processes with the same thread settings; on
GPUs, which take each batch whole, as far as their kernels are deterministic,
which `tf.config.experimental.enable_op_determinism()` makes them, as it makes
two runs on one GPU agree). Chunk 0 keeps the plan's seed and
the model's noise as they stand, so an attack on up to `CHUNK` images runs
exactly as it did before chunks.

Across the machines of `TF_CONFIG` ("multi_worker") every worker runs the same
program: chunk `c` goes to worker `c mod W` (and there to its devices, as
above), and after each attack the workers exchange their chunks' images with
TensorFlow's collective all-reduce (each contributes its chunks at their places
and zeros elsewhere, so the sum is exact), so that every worker holds the whole
result and carries on as one device would. Only the chief (worker 0) writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_pnil import recipe
from keras_pnil.attacks.common import DEFAULT_BATCH_SIZE, placed

STRATEGIES = ("default", "mirrored", "multi_worker")
# Images per independent attack call: four of the attack's batches. Every chunk is a whole attack call
# (AutoAttack's ensemble, Square's query loop) with its own per-call overhead, which one batch a chunk paid
# four times over on 1,000 images (the official AutoAttack parity run, docs/benchmarks.md).
CHUNK = 4 * DEFAULT_BATCH_SIZE
_COPIES = "_keras_pnil_replica_copies"  # a model's copies on the other devices, set past Keras' tracking
_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host0:port", "host1:port"]}, '
                      '"task": {"type": "worker", "index": 0}}')


def chunk_seed(seed: int, chunk: int, stream: int = 0) -> int:
    """The seed of chunk `chunk` (≥ 1) of an attack seeded `seed`: `stream` 0 for the attack, k + 1 for the
    model's k-th noise generator. Chunk 0 uses `seed` itself.

    Example:
        >>> chunk_seed(0, 1) == chunk_seed(0, 1) != chunk_seed(0, 2)
        True
    """
    return int(np.random.SeedSequence([seed, chunk, stream]).generate_state(1)[0] >> 1)


def _noise_generators(model) -> list:
    """The model's Keras seed generators (a PNIL's, dropout's), in layer order."""
    found, seen = [], set()
    for layer in model._flatten_layers():
        for generator in getattr(layer, "_seed_generators", []):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
    return found


@contextlib.contextmanager
def kept_noise(model):
    """Within this context the model's noise may be drawn; afterwards it stands where it stood (so a timed
    pass, whose count depends on the machine, leaves a random model's later draws as they were)."""
    states = [generator.state.numpy().copy() for generator in _noise_generators(model)]
    try:
        yield
    finally:
        for generator, state in zip(_noise_generators(model), states, strict=True):
            generator.state.assign(state)


def _seeded_noise(model, seed: int, chunk: int) -> None:
    """The model's noise generators set to chunk `chunk`'s seeds: its draws no longer depend on what ran before."""
    for k, generator in enumerate(_noise_generators(model)):
        generator.state.assign(np.asarray([chunk_seed(seed, chunk, k + 1), 0], np.dtype(generator.state.dtype)))


@dataclass(frozen=True)
class Worker:
    """This process's place among the machines of `TF_CONFIG`.

    Attributes:
        index: Its index among the workers, the chief first (0: the chief, which writes the results).
        count: The number of workers (the chief and the workers of the cluster).
        task: The prefix of its devices' names once the cluster runs, e.g. `/job:worker/replica:0/task:1`.
    """

    index: int
    count: int
    task: str


def cluster_worker(tf_config: str | None) -> Worker:
    """This process's `Worker` in `tf_config` (the `TF_CONFIG` text), or a one-line error naming the fix.

    Example:
        >>> cluster_worker('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}')
        Worker(index=1, count=2, task='/job:worker/replica:0/task:1')
    """
    if not tf_config:
        raise ValueError("strategy multi_worker needs the TF_CONFIG environment variable (the cluster and this "
                         f"task), e.g. {_TF_CONFIG_EXAMPLE}; to use this machine's devices alone, use strategy "
                         "mirrored.")
    try:
        config = json.loads(tf_config)
    except json.JSONDecodeError:
        config = None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not (isinstance(cluster, dict) and all(isinstance(cluster.get(kind, []), list) for kind in ("chief", "worker"))):
        raise ValueError(f"TF_CONFIG is not a JSON object with a cluster: {tf_config[:80]!r}; set it as "
                         f"{_TF_CONFIG_EXAMPLE}.")
    places = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
    task = config.get("task")
    place = (task.get("type"), task.get("index", 0)) if isinstance(task, dict) else None
    if place not in places:
        named = ", ".join(f"{kind} {i}" for kind, i in places) or "none"
        raise ValueError(f"TF_CONFIG's task {json.dumps(task)} is not a chief or worker of its cluster (it has: "
                         f"{named}); set its task to this machine's place, e.g. "
                         '{"type": "worker", "index": 0}.')
    return Worker(places.index(place), len(places), f"/job:{place[0]}/replica:0/task:{place[1]}")


@dataclass(frozen=True)
class Replicas:
    """The devices an evaluation spreads each attack over (see the module's docstring).

    Attributes:
        strategy: "default" (one device), "mirrored" (every GPU of this machine, as
            `tf.distribute.MirroredStrategy` takes them; without a GPU, every logical CPU device) or
            "multi_worker" (every machine of `TF_CONFIG`, each with its devices as mirrored).
        devices: This machine's devices, one replica each (none for "default": TensorFlow places the work).
        worker: This machine's index among the workers (0: the chief).
        workers: The number of machines.
    """

    strategy: str = "default"
    devices: tuple[str, ...] = ()
    worker: int = 0
    workers: int = 1

    @property
    def count(self) -> int:
        """The replicas on all the machines."""
        return max(len(self.devices), 1) * self.workers

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the results (the only one, or worker 0 of a cluster)."""
        return self.worker == 0

    def describe(self) -> str:
        """For the log, e.g. `mirrored over 2 devices (/device:CPU:0, /device:CPU:1)`."""
        if self.strategy == "default":
            return "one device"
        local = len(self.devices)
        devices = f"{local} device{'s' if local > 1 else ''} ({', '.join(self.devices)})"
        if self.workers == 1:
            return f"{self.strategy} over {devices}"
        return (f"{self.strategy} over {self.workers} workers × {devices}, as worker {self.worker}"
                + (" (the chief)" if self.is_chief else ""))

    def run(self, attack, model, x, y, threat, staged: bool = False):
        """`attack.run(model, x, y, threat)` (an `AttackPlan`), its images in chunks dealt to the replicas.

        The same images for any number of replicas and workers. Afterwards the model's noise stands where one
        device leaves it (chunk 0's end for one chunk, else seeded from the chunk count), so whatever the
        evaluation draws next is the same too. With `staged` (an ensemble, see `AttackPlan.run`), the pair
        (images, per image the position of the stage that broke it), both gathered the same way.
        """
        images = np.asarray(attack.images, dtype=int)
        chunks = [images[i:i + CHUNK] for i in range(0, len(images), CHUNK)] or [images]
        mine = list(range(self.worker, len(chunks), self.workers))  # this worker's chunks: c mod workers
        copies = self._copies(model, min(len(self.devices) or 1, len(mine)))
        parts: list = [None] * len(chunks)
        stop = threading.Event()  # set when a replica fails or the run is interrupted: the others stop too

        def work(replica: int) -> None:
            with placed(self.devices[replica] if self.devices else None):  # the attacks' lanes too
                for c in mine[replica::len(copies)]:
                    if stop.is_set():
                        return
                    seed = attack.seed if c == 0 else chunk_seed(attack.seed, c)
                    if c:
                        _seeded_noise(copies[replica], attack.seed, c)
                    part = dataclasses.replace(attack, images=tuple(chunks[c].tolist()), seed=seed)
                    parts[c] = part.run(copies[replica], x, y, threat, **({"staged": True} if staged else {}))

        if len(copies) == 1:
            work(0)
        elif copies:
            with ThreadPoolExecutor(len(copies), thread_name_prefix="keras-pnil-replica") as pool:
                try:
                    futures = [pool.submit(work, r) for r in range(len(copies))]
                    wait(futures, return_when=FIRST_EXCEPTION)
                    stop.set()  # all done, or one failed: the others stop after their chunk
                    for future in futures:
                        future.result()
                except BaseException:  # Ctrl-C: the replicas stop after their chunk
                    stop.set()
                    raise
        images = [None if p is None else p[0] for p in parts] if staged else parts
        if self.workers > 1:
            result = self._exchanged(images, chunks, x)
            if staged:
                codes = [None if p is None else np.asarray(p[1], np.float64)[:, None] for p in parts]
                result = (result, self._exchanged(codes, chunks, np.zeros((1, 1))).ravel())
            if len(chunks) == 1:
                self._chiefs_noise(model)  # only the chief ran chunk 0, on the model itself
        else:
            result = np.concatenate(images)
            if staged:
                result = (result, np.concatenate([p[1] for p in parts]))
        if len(chunks) > 1:
            _seeded_noise(model, attack.seed, len(chunks))
        return result

    def from_chief(self, values: np.ndarray | None) -> np.ndarray | None:
        """The chief's `values` (a 1-D array of floats, or None) on every worker; the workers' own are ignored.

        Example:
            >>> spread = replicas("multi_worker")  # doctest: +SKIP
            >>> spread.from_chief(np.array([1.0]) if spread.is_chief else None)  # on every worker  # doctest: +SKIP
            array([1.])
        """
        if self.workers == 1:
            return values
        values = None if values is None or not self.is_chief else np.asarray(values, np.float64)
        present, size = self._all_sum(np.array([0, 0] if values is None else [1, len(values)], np.int64))
        if not present:
            return None
        shared = self._all_sum(np.zeros(size) if values is None else values)
        return values if values is not None else shared

    def shared(self, store):
        """`store` (a stage store, or None) as the chief has it, on every worker (a `ChiefStore`); `store`
        itself on one machine."""
        return store if self.workers == 1 else ChiefStore(self, store if self.is_chief else None)

    def _exchanged(self, parts: list, chunks: list, like: np.ndarray) -> np.ndarray:
        """Every chunk's images on every worker: each contributes the chunks it ran (zeros elsewhere) and a
        column of ones marking them, summed over the workers (exact: one non-zero term per pixel)."""
        flat = np.zeros((sum(len(c) for c in chunks), int(np.prod(like.shape[1:])) + 1), like.dtype)
        start = 0
        for chunk, part in zip(chunks, parts, strict=True):
            if part is not None:
                flat[start:start + len(chunk)] = np.concatenate(
                    [np.reshape(part, (len(chunk), -1)), np.ones((len(chunk), 1), like.dtype)], axis=1)
            start += len(chunk)
        total = self._all_sum(flat)
        if not np.all(total[:, -1] == 1):
            raise RuntimeError("the workers of TF_CONFIG did not each attack their own chunks of the images: run "
                               "the same command, with the same cluster in TF_CONFIG, on every worker.")
        return total[:, :-1].reshape((len(flat), *like.shape[1:]))

    def _chiefs_noise(self, model) -> None:
        """Every worker's model noise set to the chief's."""
        generators = _noise_generators(model)
        if not generators:
            return
        mine = [g.state.numpy() for g in generators]
        states = np.concatenate([s.ravel() for s in mine]).astype(np.int64)
        states = self._all_sum(states if self.is_chief else np.zeros_like(states))
        ends = np.cumsum([s.size for s in mine])[:-1]
        for generator, own, state in zip(generators, mine, np.split(states, ends), strict=True):
            generator.state.assign(state.reshape(own.shape).astype(own.dtype))

    def _all_sum(self, value: np.ndarray) -> np.ndarray:
        """The sum over the workers of each one's `value` (the same shape and dtype on all), by the
        multi-worker strategy's collective all-reduce (one local replica contributes it, the others zeros)."""
        strategy = recipe.strategy("multi_worker")
        local = len(strategy.extended.worker_devices)
        zeros = np.zeros_like(value)
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(zeros if context.replica_id_in_sync_group % local else value))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

    def _copies(self, model, count: int) -> list:
        """`model` and, for each further replica, a copy with its weights on that replica's device (kept on
        `model`, so the attacks' compiled graphs on each copy are traced once)."""
        copies = getattr(model, _COPIES, None)
        if copies is None:
            copies = {}
            object.__setattr__(model, _COPIES, copies)
        for device in self.devices[1:count]:
            if device not in copies:
                with tf.device(device):
                    try:
                        copy = keras.models.clone_model(model)
                    except Exception as err:  # Keras raises several kinds for models it cannot rebuild
                        raise ValueError(f"model {model.name!r} cannot be copied onto {device} for a "
                                         f"{self.strategy} evaluation ({type(err).__name__}: {err}); evaluate "
                                         "it with --strategy default") from None
                    copy.set_weights(model.get_weights())
                copies[device] = copy
        return [model, *(copies[d] for d in self.devices[1:count])][:count]


class ChiefStore:
    """A stage store (`records.StageStore`) as the chief has it, on every worker of a cluster: each load is
    the chief's, so that every worker skips the same finished stages; only the chief saves."""

    def __init__(self, spread: Replicas, store):
        self.spread, self.store = spread, store

    def load(self, name: str) -> np.ndarray | None:
        return self.spread.from_chief(None if self.store is None else self.store.load(name))

    def save(self, name: str, values) -> None:
        if self.store is not None:
            self.store.save(name, values)


def local_devices(task: str = "") -> tuple[str, ...]:
    """This machine's GPUs (as `tf.distribute.MirroredStrategy` takes them), else its logical CPU devices;
    in a running cluster, those of `task` (a `Worker.task`), named as on one machine (`/device:GPU:0`)."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tuple("/device:" + d.name.split("/device:")[-1] for d in devices if d.name.startswith(task))


def replicas(strategy: str = "default") -> Replicas:
    """The `Replicas` of `strategy`, checked before any work: "default", "mirrored" or "multi_worker" (which
    needs `TF_CONFIG` naming this process's place in the cluster, and starts the cluster: call it before
    TensorFlow runs anything, as the evaluate command does).

    Example:
        >>> replicas("mirrored").describe()  # doctest: +SKIP
        'mirrored over 2 devices (/device:GPU:0, /device:GPU:1)'
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}.")
    if strategy == "default":
        return Replicas()
    worker = cluster_worker(os.environ.get("TF_CONFIG")) if strategy == "multi_worker" else Worker(0, 1, "")
    if worker.count == 1:
        return Replicas(strategy, local_devices())
    try:
        recipe.strategy("multi_worker")  # created once; its collectives exchange each attack's images
    except RuntimeError as err:
        if "program startup" not in str(err):
            raise
        raise ValueError("strategy multi_worker starts the cluster's collectives, which TensorFlow allows only "
                         "before it runs anything: call keras_pnil.replicas.replicas('multi_worker') first in the "
                         "program, before building the model (the evaluate command does).") from None
    return Replicas(strategy, local_devices(worker.task), worker.index, worker.count)
