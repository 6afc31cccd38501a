"""AutoAttack's speed against the official implementation: the `standard` version on the same PreActResNet-18.

The official AutoAttack of Croce and Hein (github.com/fra31/auto-attack, on the package index as
`pyautoattack`; written against its 0.2.0) in PyTorch, against `kp.robustness(..., attacks="autoattack",
budget="autoattack")`, each as one whole call on the same images with the same weights: Wong et al.'s
PreActResNet-18 (`torch_preact_resnet.py`) with random weights, copied into `kp.models.preact_resnet18`.
The images are synthetic 32×32×3 pixels labelled with the network's own predictions, once its BatchNorm
statistics are those of these images, so every image starts classified right. (Left at their initial 0 and 1,
the statistics make the network name one class for every image; five Adam steps on random labels instead give
a network that the official APGD-CE did not break on 8 such images in 92 s, and every later stage then runs
in full.) This network is not robust (FGSM at 2/255 breaks it), so APGD-CE breaks the
images and the later stages see none: on a CPU the call is mostly APGD-CE, whose official version runs its
100 steps on every image. ε = 8/255, standard version (APGD-CE, APGD-T and FAB-T on 9 target classes, 100
steps each; Square 5,000 queries). Timed: the official call with its own checks;
ours with its start-up tracing, without our gradient-masking checks (`checks=False`: they run attacks of their
own). Target: ours takes <= the official's time (ratio >= 1.0x). Needs PyTorch and `pyautoattack`; the official
runs on a GPU when PyTorch sees one.

    python benchmarks/autoattack_reference.py [--images 16]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_pnil as kp  # noqa: E402

EPSILON = 8 / 255


def labelled_by_the_network(model, images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images in [0, 1] and the PyTorch `model`'s predictions on them as labels, its BatchNorm statistics
    first set to these images'; the model is left in inference mode."""
    import torch

    x = np.random.default_rng(seed).uniform(size=(images, 32, 32, 3)).astype("float32")
    images_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one pass gives these images' statistics
    with torch.no_grad():
        model.train()(images_t)
        y = model.eval()(images_t).argmax(1).numpy()
    return x, y.astype("int32")


def official(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(clean accuracy, robust accuracy, seconds) of the official AutoAttack's whole call."""
    import torch

    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise SystemExit(f"The official AutoAttack is missing ({error}): pip install pyautoattack==0.2.0") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    labels = torch.from_numpy(y.astype(np.int64)).to(device)
    start = time.perf_counter()
    adversary = AutoAttack(model, eps=EPSILON, version="standard", seed=0, device=device)
    _, y_adv = adversary.run_standard_evaluation(images, labels, batch_size=len(x))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean().item()
    return clean, (y_adv == labels).float().mean().item(), seconds


def ours(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, list[str]]:
    """(clean accuracy, robust accuracy, seconds, the stage lines) of `kp.robustness`'s whole call."""
    lines = []
    start = time.perf_counter()
    result = kp.robustness(model, x, y, EPSILON, attacks="autoattack", budget="autoattack", checks=False, seed=0,
                           progress=lines.append)
    return result.clean, result.accuracy("autoattack"), time.perf_counter() - start, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--verbose", action="store_true", help="print our evaluation's stage lines")
    args = parser.parse_args()
    try:
        import torch
        from torch_preact_resnet import PreActResNet18, copy_weights
    except ImportError as error:
        raise SystemExit(f"PyTorch is missing ({error}): pip install torch") from None

    torch.manual_seed(0)
    reference = PreActResNet18()
    x, y = labelled_by_the_network(reference, args.images)
    model = copy_weights(reference, kp.models.preact_resnet18())
    clean_o, robust_o, seconds_o = official(reference, x, y)
    print(f"official AutoAttack: {seconds_o:.1f} s", flush=True)
    clean_k, robust_k, seconds_k, lines = ours(model, x, y)
    if args.verbose:
        print("\n".join(lines))
    print(f"AutoAttack standard, ε = 8/255, PreActResNet-18 (random weights, the same in both), {len(x)} synthetic "
          f"32×32×3 images labelled by the network, one whole call each, {torch.get_num_threads()} PyTorch threads")
    print("| implementation | clean % | robust % | seconds | images/s | vs official |\n|---|---|---|---|---|---|")
    for name, clean, robust, seconds in (("official AutoAttack (pyautoattack, PyTorch)", clean_o, robust_o, seconds_o),
                                         ("keras-pnil `robustness(attacks=\"autoattack\")`", clean_k, robust_k,
                                          seconds_k)):
        print(f"| {name} | {100 * clean:.1f} | {100 * robust:.1f} | {seconds:.1f} | {len(x) / seconds:.2f} | "
              f"{seconds_o / seconds:.2f}x |")
    print(f"keras-pnil {seconds_o / seconds_k:.2f}x the official AutoAttack's speed (target >= 1.0): "
          f"{'met' if seconds_k <= seconds_o else 'MISSED'}")


if __name__ == "__main__":
    main()
