"""Attack throughput relative to the model's raw speed, measured side by side.

- PGD with EOT: image·step·sample input gradients per second, as a fraction of
  the raw input-gradient throughput at the same (tiled) batch size. Target >= 0.8.
- SPSA: model evaluations per second, as a fraction of raw forward throughput
  at the same batch size. Target >= 0.8.

    python benchmarks/attack_throughput.py [--images 100] [--eot 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_pnil as kp  # noqa: E402
from keras_pnil.attacks import input_gradient  # noqa: E402


def timed(fn, repeats: int = 2) -> float:
    fn()  # trace and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eot", type=int, default=8)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--spsa-steps", type=int, default=3)
    parser.add_argument("--spsa-samples", type=int, default=64)
    args = parser.parse_args()
    (x, y), _ = kp.data.load_dataset("mnist")
    x, y = x[: args.images], y[: args.images]
    model = kp.models.small_cnn(pnil=True, seed=0)
    n, eot = args.images, args.eot

    tiled_x, tiled_y = tf.constant(np.tile(x, (eot, 1, 1, 1))), tf.constant(np.tile(y, eot))
    raw_grad = tf.function(lambda: input_gradient(model, tiled_x, tiled_y))
    grad_rate = n * eot / timed(raw_grad)
    pgd_time = timed(lambda: kp.attacks.pgd(model, x, y, 8 / 255, steps=args.pgd_steps, eot_samples=eot,
                                            batch_size=n))
    pgd_rate = n * args.pgd_steps * eot / pgd_time

    spsa_batch = n * args.spsa_samples  # inputs per SPSA step
    chunk = min(spsa_batch, 16384)
    flat = tf.constant(np.resize(x, (chunk, *x.shape[1:])))
    raw_forward = tf.function(lambda: model(flat, training=False))
    forward_rate = chunk / timed(raw_forward)
    # One noise draw per evaluation, as the raw forward pass it is compared with (EOT would multiply both).
    spsa_time = timed(lambda: kp.attacks.spsa(model, x, y, 8 / 255, steps=args.spsa_steps,
                                              perturbations=args.spsa_samples, batch_size=n, eot_samples=1),
                      repeats=1)
    spsa_rate = args.spsa_steps * spsa_batch / spsa_time

    print(f"small CNN + PNIL, {n} MNIST images, CPU ({os.cpu_count()} cores)")
    print(f"raw input gradients/s (batch {n * eot}):      {grad_rate:10.0f}")
    print(f"PGD-{args.pgd_steps} EOT-{eot} image·step·sample grads/s: {pgd_rate:10.0f}  "
          f"ratio {pgd_rate / grad_rate:.2f} (target >= 0.8)")
    print(f"raw forward passes/s (batch {chunk}):        {forward_rate:10.0f}")
    print(f"SPSA {args.spsa_steps}x{args.spsa_samples} model evaluations/s:        {spsa_rate:10.0f}  "
          f"ratio {spsa_rate / forward_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
