"""Training speed against the PyTorch reference: our NFGSM (and FGSM-RS) vs Wong et al.'s FGSM-RS loop.

The reference is Wong et al.'s MNIST training step ("Fast is better than free", `MNIST/train_mnist.py`)
written out here in eager PyTorch: their network, a uniform start in the ε-ball, one signed-gradient step
of α = 1.25ε, projection, then the update. Both sides train on the same MNIST images, batch 100, Adam,
on this machine's CPU threads; each number is the best of `--repeats` interleaved rounds, timed after a
warm-up so that neither tracing nor the first allocation is counted. Target: NFGSM images/s >= 1.0x the
reference. PyTorch is an optional benchmark dependency (`pip install torch==2.13.0`, the CPU wheel).

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/pytorch_reference.py [--images 6000]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pnil as kp  # noqa: E402

EPSILON, ALPHA, BATCH = 0.3, 0.375, 100


def torch_fgsm_rs(x: np.ndarray, y: np.ndarray) -> float:
    """Images/s of the reference FGSM-RS loop in eager PyTorch (after one warm-up batch)."""
    import torch  # the optional benchmark dependency
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y.astype(np.int64))

    def step(xb, yb):
        delta = torch.empty_like(xb).uniform_(-EPSILON, EPSILON).requires_grad_(True)
        loss_fn(model(xb + delta), yb).backward()
        delta = torch.clamp(delta.detach() + ALPHA * delta.grad.sign(), -EPSILON, EPSILON)
        delta = torch.max(torch.min(1 - xb, delta), -xb)
        loss = loss_fn(model(torch.clamp(xb + delta, 0, 1)), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(images[:BATCH], labels[:BATCH])
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        step(images[i:i + BATCH], labels[i:i + BATCH])
    return len(images) / (time.perf_counter() - start)


def keras_method(x, y, method: str, jit_compile: bool, steps_per_execution: int) -> tuple[float, float]:
    """(images/s of one epoch after a warm-up, seconds of the warm-up fit: tracing and start-up)."""
    keras.utils.set_random_seed(0)
    options = {"alpha": ALPHA} if method == "rfgsm" else {}
    trainer = kp.adversarial(kp.models.wong_mnist(seed=0), method, EPSILON, **options)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile,
                    steps_per_execution=steps_per_execution,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = kp.data.make_dataset(x, y, batch_size=BATCH, drop_remainder=True).cache()
    start = time.perf_counter()
    trainer.fit(dataset.take(steps_per_execution), epochs=1, verbose=0, shuffle=False)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    trainer.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return len(x) / (time.perf_counter() - start), warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    (x, y), _ = kp.data.load_dataset("mnist")
    x, y = x[: args.images], y[: args.images]
    variants = [("nfgsm", False, 1), ("nfgsm", True, 1), ("nfgsm", True, 10), ("nfgsm", False, 10),
                ("rfgsm", True, 10)]
    best = {"torch": 0.0, **dict.fromkeys(variants, (0.0, 0.0))}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
        best["torch"] = max(best["torch"], torch_fgsm_rs(x, y))
        for variant in variants:
            rate, warm_up = keras_method(x, y, *variant)
            if rate > best[variant][0]:
                best[variant] = (rate, warm_up)
    reference = best["torch"]
    print(f"Wong et al.'s MNIST net, ε = {EPSILON}, batch {BATCH}, {args.images} images, best of {args.repeats}")
    print("| training | XLA | steps/execution | images/s | vs PyTorch FGSM-RS | warm-up s |\n|---|---|---|---|---|---|")
    print(f"| PyTorch FGSM-RS (Wong et al.'s loop, eager) | – | – | {reference:.0f} | 1.00x | |")
    for (method, jit, spe), (rate, warm_up) in ((v, best[v]) for v in variants):
        name = "NFGSM" if method == "nfgsm" else "FGSM-RS"
        print(f"| keras-pnil {name} | {'on' if jit else 'off'} | {spe} | {rate:.0f} | {rate / reference:.2f}x | "
              f"{warm_up:.1f} |")
    top = max(best[v][0] for v in variants if v[0] == "nfgsm")
    print(f"best NFGSM {top / reference:.2f}x the PyTorch reference (target >= 1.0): "
          f"{'met' if top >= reference else 'MISSED'}")


if __name__ == "__main__":
    main()
