"""What each attack graph costs the first time it runs (tracing and instantiating it), measured in one process:
each attack called twice on the same few images, the second call's time taken from the first's.

Prints, per attack, the first call, the second and their difference in seconds. The evaluate command pays the
difference once per graph; on a model that leaves few images standing it is much of the command's time
(docs/benchmarks.md, issue 26).

    python benchmarks/first_call.py MODEL.keras [--images 27] [--norm l2] [--epsilon 2.0]
        [--data IMAGES.npz: x, y; default the first MNIST test images]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pnil as kp  # noqa: E402


def _attacks(norm: str, epsilon: float) -> dict:
    """The evaluation's gradient attacks and Square, at AutoAttack's budget (PGD as the masking checks run it)."""
    return {"apgd": lambda m, x, y: kp.apgd(m, x, y, epsilon, norm=norm),
            "fab-t": lambda m, x, y: kp.fab_targeted(m, x, y, epsilon, norm=norm),
            "square": lambda m, x, y: kp.square(m, x, y, epsilon, norm=norm, queries=100),
            "pgd": lambda m, x, y: kp.pgd(m, x, y, 7 * epsilon, norm=norm, steps=50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=27)
    parser.add_argument("--norm", default="l2", choices=["linf", "l2"])
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--data", help="an .npz with x (NHWC in [0, 1]) and y; default: MNIST's test split")
    args = parser.parse_args()
    if args.data:
        x, y = kp.data.load_npz(args.data)
    else:
        _, (x, y) = kp.data.load_dataset("mnist", os.environ.get("KERAS_PNIL_DATA_DIR", "../shared/datasets"))
    x, y = np.asarray(x[:args.images], np.float32), np.asarray(y[:args.images], np.int64)
    model = keras.saving.load_model(args.model, compile=False)
    print(f"{len(x)} images, {args.norm} ε = {args.epsilon}; seconds")
    print("| attack | first call | second call | first − second |")
    print("|---|---|---|---|")
    for name, attack in _attacks(args.norm, args.epsilon).items():
        times = []
        for _ in range(2):
            start = time.perf_counter()
            attack(model, x, y)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {times[0]:.2f} | {times[1]:.2f} | {times[0] - times[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
