"""Training speed against the PyTorch reference: our NFGSM (and FGSM-RS) vs Wong et al.'s FGSM-RS loop.

The reference is Wong et al.'s MNIST training step ("Fast is better than free", `MNIST/train_mnist.py`)
written out here in eager PyTorch: their network (`torch_models.wong_mnist`), a uniform start in the
ε-ball, one signed-gradient step of α = 1.25ε, projection, then the update. Both sides train on the same
MNIST images, batch 100, Adam, on this machine's CPU threads; each number is the best of `--repeats`
interleaved rounds, timed after a warm-up so that neither tracing nor the first allocation is counted.
Target: NFGSM images/s >= 1.0x the reference. PyTorch is an optional benchmark dependency
(`pip install torch==2.13.0`, the CPU wheel).

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/pytorch_reference.py [--images 6000]

`--processes N` measures what a user gets instead: N fresh processes per side, alternating, each
building one model and timing one epoch of `--images` after a warm-up, keras-pnil through
`AdversarialModel.fit` on arrays as the README trains. It prints every process, then the worst and
the median NFGSM ratio against the PyTorch loop's median. Target: worst >= 0.95x, median >= 1.0x.
`--tf-data-autotune --steps-per-execution 1` is what 0.2.0 did, for the before/after.

    python benchmarks/pytorch_reference.py --processes 10 --images 60000

`--architecture preact_resnet18` times Wong et al.'s CIFAR-10 FGSM-RS step (`CIFAR10/train_fgsm.py`:
ε = 8/255, α = 10/255, batch 128, SGD momentum 0.9, weight decay 5e-4; no apex, and their input
normalisation left out) on their PreActResNet-18 in eager PyTorch against our FGSM-RS and NFGSM on
`kp.models.preact_resnet18`, on synthetic 32×32×3 images (no data set needed): each side built once and
warmed up, then `--repeats` interleaved epochs, the best of each kept. Target: >= 1.0x. On a GPU, `--jit`
(Keras' XLA) and `--mixed-precision` (Keras' mixed_float16, PyTorch's autocast to float16) apply.

    python benchmarks/pytorch_reference.py --architecture preact_resnet18 [--images 256] [--jit]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_pnil as kp  # noqa: E402

EPSILON, ALPHA, BATCH = 0.3, 0.375, 100
# Wong et al.'s CIFAR-10 FGSM-RS (`CIFAR10/train_fgsm.py`): ε = 8/255, α = 10/255, batch 128, SGD.
CIFAR = {"epsilon": 8 / 255, "alpha": 10 / 255, "batch": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def torch_fgsm_rs(x: np.ndarray, y: np.ndarray, shuffle: bool = False) -> float:
    """Images/s of the reference FGSM-RS loop in eager PyTorch (after one warm-up batch).

    With `shuffle`, each epoch visits the images in a fresh random order, as Wong et al.'s DataLoader does.
    """
    import torch  # the optional benchmark dependency
    from torch import nn
    from torch_models import wong_mnist

    torch.manual_seed(0)
    model = wong_mnist()
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
    if shuffle:
        order = torch.randperm(len(images))
        images, labels = images[order], labels[order]
    for i in range(0, len(images), BATCH):
        step(images[i:i + BATCH], labels[i:i + BATCH])
    return len(images) / (time.perf_counter() - start)


def keras_user_epoch(x: np.ndarray, y: np.ndarray, autotune: bool, steps_per_execution: int | None) -> float:
    """Images/s of one NFGSM epoch as a user trains: one model, `fit` on arrays, after a warm-up `fit`."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    trainer = kp.adversarial(kp.models.wong_mnist(seed=0), "nfgsm", EPSILON)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=steps_per_execution,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    inputs = (x, y)
    if autotune:  # the owner's explicit choice, which keras-pnil leaves as it is
        options = tf.data.Options()
        options.autotune.enabled = True
        inputs = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(BATCH)
                  .prefetch(tf.data.AUTOTUNE).with_options(options), None)
    trainer.fit(x[: 5 * BATCH], y[: 5 * BATCH], batch_size=BATCH, epochs=1, verbose=0)  # traces the step
    start = time.perf_counter()
    trainer.fit(*inputs, batch_size=None if autotune else BATCH, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - start)


def one_process(side: str, images: int, autotune: bool, steps_per_execution: int | None) -> None:
    """The child of `--processes`: prints this process's images/s."""
    (x, y), _ = kp.data.load_dataset("mnist")
    x, y = x[:images], y[:images]
    if side == "torch":
        rate = torch_fgsm_rs(x, y, shuffle=True)
    else:
        rate = keras_user_epoch(x, y, autotune, steps_per_execution)
    print(f"RATE {rate:.1f}")


def fresh_processes(args) -> None:
    """N fresh processes per side, alternating; prints each, then the worst and median ratios."""
    rates = {"keras": [], "torch": []}
    for i in range(args.processes):
        for side in ("keras", "torch"):
            command = [sys.executable, __file__, "--one", side, "--images", str(args.images)]
            command += ["--tf-data-autotune"] if args.tf_data_autotune else []
            command += ["--steps-per-execution", str(args.steps_per_execution)] if args.steps_per_execution else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
            out = done.stdout
            rates[side].append(float(next(line for line in out.splitlines() if line.startswith("RATE")).split()[1]))
        print(f"process {i + 1}: keras-pnil NFGSM {rates['keras'][-1]:.0f} images/s, "
              f"PyTorch FGSM-RS {rates['torch'][-1]:.0f} images/s", flush=True)
    reference = statistics.median(rates["torch"])
    worst, median = min(rates["keras"]) / reference, statistics.median(rates["keras"]) / reference
    pairs = [k / t for k, t in zip(rates["keras"], rates["torch"], strict=True)]
    print(f"Wong et al.'s MNIST net, ε = {EPSILON}, batch {BATCH}, one epoch of {args.images} images after a "
          f"warm-up, {args.processes} fresh processes per side, tf.data autotuning "
          f"{'on' if args.tf_data_autotune else 'off (the library default)'}, steps per execution "
          f"{args.steps_per_execution or f'{kp.training.STEPS_PER_EXECUTION} (the library default)'}")
    print(f"keras-pnil NFGSM images/s: min {min(rates['keras']):.0f}, median {statistics.median(rates['keras']):.0f}, "
          f"max {max(rates['keras']):.0f}")
    print(f"PyTorch FGSM-RS images/s:  min {min(rates['torch']):.0f}, median {reference:.0f}, "
          f"max {max(rates['torch']):.0f}")
    print(f"ratio against the PyTorch median: worst {worst:.2f}x "
          f"(target >= 0.95: {'met' if worst >= 0.95 else 'MISSED'}), "
          f"median {median:.2f}x (target >= 1.0: {'met' if median >= 1.0 else 'MISSED'})")
    print(f"ratio process by process: worst {min(pairs):.2f}x, median {statistics.median(pairs):.2f}x")


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


def synthetic_cifar(images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform pixels in [0, 1] shaped 32×32×3 and uniform labels of 10 classes: timing needs no data set."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(images, 32, 32, 3)).astype("float32"), rng.integers(0, 10, images).astype("int32")


def torch_cifar_fgsm_rs(x: np.ndarray, y: np.ndarray, mixed_precision: bool) -> Callable[[], float]:
    """Wong et al.'s CIFAR-10 FGSM-RS epoch in eager PyTorch on their PreActResNet-18, warmed up; returns a
    function that trains one epoch and gives its images/s. On a GPU when PyTorch sees one."""
    import torch  # the optional benchmark dependency
    import torch.nn.functional as F
    from torch_preact_resnet import PreActResNet18

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = PreActResNet18().to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=CIFAR["lr"], momentum=CIFAR["momentum"],
                                weight_decay=CIFAR["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                              enabled=mixed_precision)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    labels = torch.from_numpy(y.astype(np.int64)).to(device)
    epsilon, alpha, batch = CIFAR["epsilon"], CIFAR["alpha"], CIFAR["batch"]

    def step(xb, yb):
        delta = torch.empty_like(xb).uniform_(-epsilon, epsilon)
        delta = torch.max(torch.min(delta, 1 - xb), -xb).requires_grad_(True)
        with autocast:
            loss = F.cross_entropy(model(xb + delta), yb)
        scaler.scale(loss).backward()  # as theirs, this backward also fills the weights' gradients
        delta = torch.clamp(delta.detach() + alpha * delta.grad.sign(), -epsilon, epsilon)
        delta = torch.max(torch.min(delta, 1 - xb), -xb)
        with autocast:
            loss = F.cross_entropy(model(xb + delta), yb)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def epoch() -> float:
        start = time.perf_counter()
        for i in range(0, len(images) - batch + 1, batch):
            step(images[i:i + batch], labels[i:i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (len(images) // batch * batch) / (time.perf_counter() - start)

    step(images[:batch], labels[:batch])
    return epoch


def keras_cifar(x: np.ndarray, y: np.ndarray, method: str, jit_compile: bool) -> Callable[[], float]:
    """`kp.adversarial(preact_resnet18(), method)` compiled with Wong et al.'s SGD, warmed up on one batch;
    returns a function that trains one epoch and gives its images/s."""
    keras.utils.set_random_seed(0)
    options = {"alpha": CIFAR["alpha"]} if method == "rfgsm" else {}
    trainer = kp.adversarial(kp.models.preact_resnet18(seed=0), method, CIFAR["epsilon"], **options)
    optimizer = keras.optimizers.SGD(CIFAR["lr"], momentum=CIFAR["momentum"], weight_decay=CIFAR["weight_decay"])
    trainer.compile(optimizer=optimizer, jit_compile=jit_compile,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = kp.data.make_dataset(x, y, batch_size=CIFAR["batch"], drop_remainder=True).cache()
    trainer.fit(dataset.take(1), epochs=1, verbose=0, shuffle=False)  # traces the train step

    def epoch() -> float:
        start = time.perf_counter()
        trainer.fit(dataset, epochs=1, verbose=0, shuffle=False)
        return (len(x) // CIFAR["batch"] * CIFAR["batch"]) / (time.perf_counter() - start)

    return epoch


def resnet_table(args) -> None:
    """PreActResNet-18: Wong et al.'s PyTorch FGSM-RS against our FGSM-RS and NFGSM, side by side."""
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = synthetic_cifar(args.images or 256)
    sides = {"PyTorch FGSM-RS (Wong et al.'s CIFAR-10 step, eager)": torch_cifar_fgsm_rs(x, y, args.mixed_precision),
             "keras-pnil FGSM-RS (`rfgsm`, α = 10/255)": keras_cifar(x, y, "rfgsm", args.jit),
             "keras-pnil NFGSM (`nfgsm`)": keras_cifar(x, y, "nfgsm", args.jit)}
    best = dict.fromkeys(sides, 0.0)
    for _ in range(args.repeats):  # interleaved, so machine noise hits every side alike
        for name, epoch in sides.items():
            best[name] = max(best[name], epoch())
    reference = next(iter(best.values()))
    print(f"PreActResNet-18, synthetic 32×32×3 images, ε = 8/255, batch {CIFAR['batch']}, SGD momentum 0.9 wd 5e-4, "
          f"{len(x)} images, best of {args.repeats} interleaved epochs after a warm-up, XLA "
          f"{'on' if args.jit else 'off'}, {'mixed precision' if args.mixed_precision else 'float32'}")
    print("| training | images/s | vs PyTorch FGSM-RS |\n|---|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.1f} | {rate / reference:.2f}x |")
    for name, rate in list(best.items())[1:]:
        print(f"{name.split(' (')[0]}: {rate / reference:.2f}x the PyTorch reference (target >= 1.0): "
              f"{'met' if rate >= reference else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=("wong_mnist", "preact_resnet18"), default="wong_mnist",
                        help="wong_mnist: MNIST on Wong et al.'s MNIST net; preact_resnet18: synthetic 32×32×3")
    parser.add_argument("--images", type=int, help="default: 6000 (wong_mnist), 256 (preact_resnet18)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=0,
                        help="measure as a user: this many fresh processes per side, one model and one epoch each")
    parser.add_argument("--tf-data-autotune", action="store_true", help="with --processes: tf.data autotuning on")
    parser.add_argument("--steps-per-execution", type=int, help="with --processes: compile's value (default: ours)")
    parser.add_argument("--jit", action="store_true", help="with preact_resnet18: Keras' train step under XLA")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="with preact_resnet18: Keras' mixed_float16 and PyTorch's autocast (for GPUs)")
    parser.add_argument("--one", choices=("keras", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.architecture == "preact_resnet18":
        if args.processes or args.one:
            parser.error("--processes measures Wong et al.'s MNIST net only: drop it or --architecture")
        return resnet_table(args)
    if args.jit or args.mixed_precision:
        parser.error("--jit and --mixed-precision apply to --architecture preact_resnet18 only")
    args.images = args.images or 6000
    if args.one:
        return one_process(args.one, args.images, args.tf_data_autotune, args.steps_per_execution)
    if args.processes:
        return fresh_processes(args)
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
