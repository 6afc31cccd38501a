"""The catastrophic-overfitting study's reference: Wong et al.'s PyTorch FGSM-RS loop on the same seeds.

Trains Wong et al.'s MNIST network with their MNIST recipe ("Fast is better than free", `MNIST/train_mnist.py`:
Adam, batch 100, 10 epochs, the one-cycle rate 0 → 5e-3 at 2/5 of training → 0 per batch, a uniform start
in the ε-ball, one signed step of α = 1.25ε, projection; shuffled batches) in eager PyTorch, one run per
seed, and measures each run as the co_study suite measures ours:

- per epoch, PGD-10 (step 2ε/10, a random start) on the same 500 validation images as our runs' monitor,
  so that `keras_pnil.seeds.collapsed` (final epoch below half the best) applies unchanged;
- at the end, PGD-50 with step 0.01 and 10 restarts (Wong et al.'s evaluation: each restart keeps the
  perturbation of the highest loss; an image's steps stop once it is misclassified) on the same 2,000
  evaluation images as the suite's plan, and clean accuracy on them.

The images and the ε come from the suite (`co_study`, budget `full`), so the two sides see exactly the
same data. Each finished seed is written atomically to `--out` (a JSON file) and skipped when the
script runs again. PyTorch is an optional benchmark dependency (`pip install torch`, the CPU wheel).

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/co_reference.py --dataset mnist \\
        --seeds 0 1 2 3 4 --out docs/results/co_study/reference-mnist.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_models import wong_mnist  # noqa: E402

from keras_pnil import data, reproduce, runs  # noqa: E402
from keras_pnil.files import atomic_write_json  # noqa: E402
from keras_pnil.seeds import collapsed  # noqa: E402

SUITE, BUDGET, METHOD = "co_study", "full", "fgsm-rs"
ALPHA_RATIO, LR_MAX = 1.25, 5e-3  # Wong et al.'s MNIST α = 0.375 at ε = 0.3, and lr_max


def study_images(dataset: str, seed: int) -> dict:
    """ε, training set, the monitor's validation images and the evaluation images of our run of `seed`."""
    suite = reproduce.load_suite(SUITE)
    config = reproduce.train_config(suite, BUDGET, reproduce.RunSpec(dataset, METHOD, False, None, seed))
    loaded = data.load_dataset(dataset, os.environ.get("KERAS_PNIL_DATA_DIR"))
    (x_train, y_train), (x_test, y_test) = loaded
    train_idx, val_idx = runs.training_indices(config, len(x_train), len(x_test))
    monitor = val_idx[: config["monitor_images"]]
    request = reproduce.suite_request(suite, BUDGET)
    x_eval, y_eval = runs.evaluation_images({**config, "validation_indices": val_idx.tolist()}, loaded,
                                            request.values["num_images"], request.values["seed"])
    return {"epsilon": config["epsilon"], "epochs": config["epochs"], "batch": config["batch_size"],
            "train": (x_train[train_idx], y_train[train_idx]), "monitor": (x_test[monitor], y_test[monitor]),
            "evaluate": (x_eval, y_eval), "pgd": suite["budgets"][BUDGET]["evaluate"]}


def _tensor(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y.astype(np.int64))


def pgd_accuracy(model, x, y, epsilon: float, alpha: float, steps: int, restarts: int, batch: int = 500) -> float:
    """Accuracy under Wong et al.'s L∞ PGD: per restart a uniform start, `steps` signed steps on the images
    still classified correctly; across restarts, each image keeps the perturbation of the highest loss."""
    correct = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        best_loss, best_delta = torch.full((len(xb),), -float("inf")), torch.zeros_like(xb)
        for _ in range(restarts):
            delta = torch.empty_like(xb).uniform_(-epsilon, epsilon)
            delta = torch.max(torch.min(delta, 1 - xb), -xb).requires_grad_(True)
            for _ in range(steps):
                logits = model(xb + delta)
                active = logits.argmax(1) == yb
                if not active.any():
                    break
                grad, = torch.autograd.grad(F.cross_entropy(logits, yb), delta)
                step = torch.clamp(delta.detach() + alpha * grad.sign(), -epsilon, epsilon)
                step = torch.max(torch.min(step, 1 - xb), -xb)
                delta = torch.where(active[:, None, None, None], step, delta.detach()).requires_grad_(True)
            with torch.no_grad():
                loss = F.cross_entropy(model(xb + delta), yb, reduction="none")
                better = loss >= best_loss
                best_delta[better], best_loss = delta.detach()[better], torch.maximum(best_loss, loss)
        with torch.no_grad():
            correct += int((model(xb + best_delta).argmax(1) == yb).sum())
    return correct / len(x)


def clean_accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_seed(images: dict, seed: int) -> dict:
    """One FGSM-RS run of Wong et al.'s MNIST loop at `seed`, with its per-epoch PGD-10 curve and final scores."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    epsilon, epochs, batch = images["epsilon"], images["epochs"], images["batch"]
    alpha = ALPHA_RATIO * epsilon
    x, y = _tensor(*images["train"])
    xm, ym = _tensor(*images["monitor"])
    model = wong_mnist()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR_MAX)
    batches = (len(x) + batch - 1) // batch
    curve, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(batches):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = x[idx], y[idx]
            t = epoch + (i + 1) / batches
            optimizer.param_groups[0]["lr"] = float(np.interp(t, [0, epochs * 2 // 5, epochs], [0, LR_MAX, 0]))
            delta = torch.empty_like(xb).uniform_(-epsilon, epsilon).requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model(xb + delta), yb), delta)
            delta = torch.clamp(delta.detach() + alpha * grad.sign(), -epsilon, epsilon)
            delta = torch.max(torch.min(delta, 1 - xb), -xb)
            loss = F.cross_entropy(model(torch.clamp(xb + delta, 0, 1)), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        curve.append(pgd_accuracy(model, xm, ym, epsilon, 2 * epsilon / 10, 10, 1))
    train_seconds = time.perf_counter() - start
    xe, ye = _tensor(*images["evaluate"])
    settings = images["pgd"]
    robust = pgd_accuracy(model, xe, ye, epsilon, settings["pgd_step_size"], settings["pgd_steps"],
                          settings["pgd_restarts"])
    return {"seed": seed, "pgd_val_accuracy": curve, "collapsed": collapsed(curve),
            "clean": clean_accuracy(model, xe, ye), "pgd": robust, "train_seconds": train_seconds, "images": len(xe),
            "attack": f"PGD-{settings['pgd_steps']} step {settings['pgd_step_size']} x {settings['pgd_restarts']} "
                      "restarts (Wong et al.)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default="mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=None, help="PyTorch intra-op threads (default: its own)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of results (resumed per seed)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    for seed in args.seeds:
        if str(seed) in done.get("runs", {}):
            print(f"seed {seed}: done earlier, {done['runs'][str(seed)]['pgd']:.4f}")
            continue
        images = study_images(args.dataset, seed)
        result = train_seed(images, seed)
        done = {"dataset": args.dataset, "epsilon": images["epsilon"], "torch": torch.__version__,
                "command": "python benchmarks/co_reference.py " + f"--dataset {args.dataset} --out {args.out}",
                "runs": {**done.get("runs", {}), str(seed): result}}
        atomic_write_json(args.out, done)
        print(f"seed {seed}: clean {result['clean']:.4f}, PGD {result['pgd']:.4f}, collapsed {result['collapsed']}, "
              f"curve {[round(v, 3) for v in result['pgd_val_accuracy']]}, train {result['train_seconds']:.0f}s")
    stats = list(done["runs"].values())
    stable = [r["pgd"] for r in stats if r["collapsed"] is False]
    print(f"{args.dataset}: {sum(bool(r['collapsed']) for r in stats)} of {len(stats)} seeds collapsed; PGD mean "
          f"{np.mean([r['pgd'] for r in stats]):.4f}; not collapsed {np.mean(stable) if stable else float('nan'):.4f} "
          f"(n={len(stable)})")


if __name__ == "__main__":
    main()
