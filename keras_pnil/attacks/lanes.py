"""The lanes: on a machine without a GPU, an attack's work goes in `LANES` parts run side by side, each on its
share of the cores.

On this project's 2-core CPU one thread per operation beats two on small batches (Square-L2 on 27 images:
1.2 s against 2.1–3.7 s), and two parts side by side beat one batch spread over both cores (APGD-L2 on 1,000
MNIST images: 5.2 s against 7.4 s; docs/benchmarks.md, "Seventh session"). So:

- on a deterministic model an attack's batch is cut into `LANES` slices, attacked from threads of their own
  through its one compiled graph, each slice's draws from its own seed (`attacks.common.SeededGraph`);
- on a random model, whose noise layers draw from generators that concurrent calls would share, the batch
  stays whole and its EOT draws are computed in `LANES` groups within the graph (`attacks.eot.EOT.draws`),
  which TensorFlow runs side by side while it advances the generators in program order.

What the parts are is fixed by the batch and this machine's kind alone, so whether they run side by side or
one after the other cannot change a result. A GPU takes each batch whole.
"""

from __future__ import annotations

import os

import tensorflow as tf

LANES = 2  # the parts an attack's work is cut into on a machine without a GPU


def count() -> int:
    """The lanes of this machine: `LANES` without a GPU, 1 with one (a GPU takes each batch whole).

    Example:
        >>> count()  # on a machine without a GPU  # doctest: +SKIP
        2
    """
    return 1 if tf.config.list_logical_devices("GPU") else LANES


def threads_for_lanes() -> bool:
    """On a machine without a GPU, gives each lane its share of the cores (intra-op threads: cores // `LANES`,
    at least 1); returns whether it could. TensorFlow takes this setting only before its first operation, so a
    command calls it first thing; afterwards (or with a GPU) it changes nothing.

    The evaluate command does: APGD-L2 on 1,000 MNIST images took 5.2 s so, 6.5–7.5 s in lanes over
    TensorFlow's default threads and 7.4 s in one batch (docs/benchmarks.md).

    Example:
        >>> threads_for_lanes()  # doctest: +SKIP
        True
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max((os.cpu_count() or 1) // LANES, 1))
    except RuntimeError:  # TensorFlow has started: its threads stay as they are
        return False
    return True
