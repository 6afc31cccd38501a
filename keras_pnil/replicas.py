"""Evaluation across devices: an attack's images, in chunks of four attack batches, dealt to one model copy per device.

Attacks are per image and independent, so the data-parallel scheme is to
split an attack's images, not its computation: chunk `c` is one attack call on
`CHUNK` images (four batches of the attack), run by replica `c mod R` on its
device, in a thread of its own (as `tf.distribute.MirroredStrategy` runs its
replicas), on its copy of the model. Every random draw of a chunk (the
attack's starts, restarts and Square's windows; the model's noise: a PNIL, EOT)
comes from that chunk's own seeds, so the adversarial images do not depend on
the number of replicas, only on the plan's seed: one device gives exactly what
several give (bit for bit on CPUs; on GPUs as far as their kernels are
deterministic, which `tf.config.experimental.enable_op_determinism()` makes
them, as it makes two runs on one GPU agree). Chunk 0 keeps the plan's seed and
the model's noise as they stand, so an attack on up to `CHUNK` images runs
exactly as it did before chunks.
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

from keras_pnil.attacks.common import DEFAULT_BATCH_SIZE

STRATEGIES = ("default", "mirrored", "multi_worker")
# Images per independent attack call: four of the attack's batches. Every chunk is a whole attack call
# (AutoAttack's ensemble, Square's query loop) with its own per-call overhead, which one batch a chunk paid
# four times over on 1,000 images (the official AutoAttack parity run, docs/benchmarks.md).
CHUNK = 4 * DEFAULT_BATCH_SIZE
_COPIES = "_keras_pnil_replica_copies"  # a model's copies on the other devices, set past Keras' tracking


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
class Replicas:
    """The devices an evaluation spreads each attack over (see the module's docstring).

    Attributes:
        strategy: "default" (one device), "mirrored" (every GPU of this machine, as
            `tf.distribute.MirroredStrategy` takes them; without a GPU, every logical CPU device) or
            "multi_worker" (a `TF_CONFIG` naming this machine alone: its devices, as mirrored).
        devices: The devices, one replica each (none for "default": TensorFlow places the work).
    """

    strategy: str = "default"
    devices: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return max(len(self.devices), 1)

    def describe(self) -> str:
        """For the log, e.g. `mirrored over 2 devices (/device:CPU:0, /device:CPU:1)`."""
        if self.strategy == "default":
            return "one device"
        return f"{self.strategy} over {self.count} device{'s' if self.count > 1 else ''} ({', '.join(self.devices)})"

    def run(self, attack, model, x, y, threat) -> np.ndarray:
        """`attack.run(model, x, y, threat)` (an `AttackPlan`), its images in chunks dealt to the replicas.

        The same images for any number of replicas. Afterwards the model's noise stands where one device
        leaves it (chunk 0's end for one chunk, else seeded from the chunk count), so whatever the
        evaluation draws next is the same too.
        """
        images = np.asarray(attack.images, dtype=int)
        chunks = [images[i:i + CHUNK] for i in range(0, len(images), CHUNK)] or [images]
        copies = self._copies(model, min(self.count, len(chunks)))
        parts: list = [None] * len(chunks)
        stop = threading.Event()  # set when a replica fails or the run is interrupted: the others stop too

        def work(replica: int) -> None:
            with tf.device(self.devices[replica]) if self.devices else contextlib.nullcontext():
                for c in range(replica, len(chunks), len(copies)):
                    if stop.is_set():
                        return
                    seed = attack.seed if c == 0 else chunk_seed(attack.seed, c)
                    if c:
                        _seeded_noise(copies[replica], attack.seed, c)
                    part = dataclasses.replace(attack, images=tuple(chunks[c].tolist()), seed=seed)
                    parts[c] = part.run(copies[replica], x, y, threat)

        if len(copies) == 1:
            work(0)
        else:
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
        if len(chunks) > 1:
            _seeded_noise(model, attack.seed, len(chunks))
        return np.concatenate(parts)

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
        return [model, *(copies[d] for d in self.devices[1:count])]


def local_devices() -> tuple[str, ...]:
    """This machine's GPUs (as `tf.distribute.MirroredStrategy` takes them), else its logical CPU devices."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tuple(d.name for d in devices)


def replicas(strategy: str = "default") -> Replicas:
    """The `Replicas` of `strategy`, checked before any work: "default", "mirrored" or "multi_worker" (which
    needs `TF_CONFIG`, and a cluster of this machine alone: an evaluation does not span machines).

    Example:
        >>> replicas("mirrored").describe()  # doctest: +SKIP
        'mirrored over 2 devices (/device:GPU:0, /device:GPU:1)'
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}.")
    if strategy == "default":
        return Replicas()
    if strategy == "multi_worker":
        text = os.environ.get("TF_CONFIG")
        if not text:
            raise ValueError("strategy multi_worker needs the TF_CONFIG environment variable (the cluster and this "
                             "task); to use this machine's devices, use strategy mirrored.")
        try:
            cluster = json.loads(text).get("cluster", {})
        except (json.JSONDecodeError, AttributeError):
            raise ValueError(f"TF_CONFIG is not a JSON object with a cluster: {text[:80]!r}.") from None
        machines = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        if machines != 1:
            raise ValueError(f"an evaluation runs on one machine, and TF_CONFIG names {machines}: evaluate with "
                             "strategy mirrored on each machine, each on its own targets.")
    return Replicas(strategy, local_devices())
