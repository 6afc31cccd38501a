"""The attacks' lanes (`keras_pnil.attacks.lanes`), measured side by side in fresh processes: APGD on a
full batch and Square on the few images APGD leaves, with the batch in one slice or in lanes, under
TensorFlow's default threads or one intra-op thread per lane (what `keras-pnil-evaluate` sets on a CPU).

Each configuration runs in a process of its own (TensorFlow takes its thread setting only before it starts),
twice, interleaved; graphs are warmed on 8 images before the timed calls. Prints one line per run and the
table of docs/benchmarks.md ("Seventh session").

    python benchmarks/lanes.py MODEL.keras [--images 1000] [--norm l2] [--epsilon 2.0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = [(1, None), (1, 1), (2, None), (2, 1)]  # (slices, intra-op threads; None: TensorFlow's default)
SURVIVORS = 27  # Square's images: about what APGD-CE leaves of 1,000 on the parity's clean model in L2


def measure(model_path: str, images: int, norm: str, epsilon: float, slices: int, intra: int | None) -> dict:
    """One configuration's seconds, in this process (call it in a fresh one)."""
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    import keras
    import numpy as np

    import keras_pnil as kp
    from keras_pnil.attacks import lanes
    from keras_pnil.data import load_split

    lanes.LANES = slices
    model = keras.models.load_model(model_path)
    x, y = load_split("mnist", "test")
    x, y = x[:images], y[:images]
    kp.apgd(model, x[:8], y[:8], epsilon, norm=norm, batch_size=1024)  # traced and instantiated: not timed
    kp.square(model, x[:8], y[:8], epsilon, norm=norm, queries=100, batch_size=1024)
    start = time.perf_counter()
    x_adv = kp.apgd(model, x, y, epsilon, norm=norm, batch_size=1024)
    apgd_s = time.perf_counter() - start
    right = np.flatnonzero(model.predict(x_adv, verbose=0).argmax(1) == y)
    idx = right[:SURVIVORS] if len(right) >= SURVIVORS else np.arange(SURVIVORS)
    start = time.perf_counter()
    kp.square(model, x[idx], y[idx], epsilon, norm=norm, queries=1000, batch_size=1024)
    return {"slices": slices, "intra": intra or "default", "apgd_s": apgd_s,
            "square_s": time.perf_counter() - start, "robust": len(right) / len(x)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--norm", default="l2")
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "slices,intra" in a fresh process
    args = parser.parse_args()
    if args.one:
        slices, intra = (int(v) if v else None for v in args.one.split(","))
        print(json.dumps(measure(args.model, args.images, args.norm, args.epsilon, slices, intra)))
        return 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    for _ in range(args.repeats):
        for slices, intra in CONFIGS:
            done = subprocess.run([sys.executable, __file__, args.model, "--images", str(args.images), "--norm",
                                   args.norm, "--epsilon", str(args.epsilon), "--one", f"{slices},{intra or ''}"],
                                  capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\n| slices | intra-op threads | APGD-{args.norm}, {args.images} images | Square-{args.norm}, "
          f"{SURVIVORS} images, 1,000 queries |\n|---|---|---|---|")
    for slices, intra in CONFIGS:
        mine = [r for r in rows if r["slices"] == slices and r["intra"] == (intra or "default")]
        apgd_s = ", ".join(f"{r['apgd_s']:.2f} s" for r in mine)
        square_s = ", ".join(f"{r['square_s']:.2f} s" for r in mine)
        print(f"| {slices} | {intra or 'default'} | {apgd_s} | {square_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
