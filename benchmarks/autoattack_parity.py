"""Parity with the official AutoAttack: the same network, weights and images, L∞ and L2, `standard` version.

For each Keras model file (`--models NAME=PATH.keras,...`, plain CNNs such as `kp.models.wong_mnist`), the
same network is built in PyTorch with the same weights (`torch_models.from_keras`; the largest logit
difference on the images is printed and must be <= 1e-5, else the script stops). Then, on the first
`--images` MNIST test images, for each norm of `--norms`:

- the official AutoAttack of Croce and Hein (github.com/fra31/auto-attack, `pyautoattack` 0.2.0 on the
  package index), `AutoAttack(model, norm=..., eps=..., version="standard", seed=0)` and
  `run_standard_evaluation`, on PyTorch's CPU threads, as a script of its own: a fresh Python process that
  imports PyTorch and `pyautoattack`, loads the network and the images, attacks and writes the per-image
  result (this file run with `--official-child`);
- ours: the command itself, `keras-pnil-evaluate MODEL.keras --data IMAGES.npz --num-images N --epsilon E
  --norm NORM --out DIR` (AutoAttack's budget, the default for model files: `standard`, and the masking
  checks, which the official script does not run), in a fresh process.

Each side's time is its whole process, start to exit (whole command against whole script). Printed side by
side: both robust accuracies, both times, and the images on which they disagree (robust for one, broken by
the other). Targets (issue 26): ours <= the official + 0.3 points on every model, and ours at least as fast.
`--out FILE.json` keeps the results and FILE.md the table, both written atomically (after every case, so a
stopped run keeps what it finished). Time on a quiet machine (`touch /tmp/kp-quiet` first on the shared CPU,
`rm -f /tmp/kp-quiet` after). `--official-threads 1` gives PyTorch one thread: on a loaded CPU its default
(one per core) made the official FAB-T and Square over ten times slower here.

    python benchmarks/autoattack_parity.py --models fgsm-rs=runs/parity/fgsm-rs/model.keras,\
clean=runs/parity/clean/model.keras --images 1000 --norms linf,l2 --official-threads 1 --out runs/parity/parity.json

`--make-fixture DIR` writes the tests' small case instead (`tests/test_autoattack_parity.py`): a tiny CNN
trained for a few seconds (`autoattack_parity.keras`), FIXTURE_IMAGES MNIST test images
(`autoattack_parity_images.npz`), and the official AutoAttack's per-image result on them in L∞ and L2
(`autoattack_parity_official.json`, with this command and the versions it ran with):

    KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/autoattack_parity.py --make-fixture tests/fixtures

Needs PyTorch (`pip install torch`, the CPU wheel) and `pip install pyautoattack==0.2.0`: benchmark
dependencies, never the library's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

OFFICIAL_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
EPSILONS = {"linf": 0.3, "l2": 2.0}  # MNIST's usual radii: L∞ 0.3 (Madry et al.), L2 2.0 (Croce and Hein)
LOGIT_TOLERANCE = 1e-5
ACCURACY_MARGIN = 0.003  # the target: ours <= the official + 0.3 points
OFFICIAL_BATCH = 500
FIXTURE_IMAGES = 16
FIXTURE_EPSILONS = {"linf": 0.1, "l2": 1.5}
FIXTURE_TRAINING_EPSILON = 0.05  # NFGSM at L∞ 0.05 (at 0.1 this tiny network stays at chance)
FIXTURE_THREADS = 1  # the fixture's official run and its live re-run in the tests: one PyTorch thread each
FIXTURE_FILES = {"model": "autoattack_parity.keras", "images": "autoattack_parity_images.npz",
                 "official": "autoattack_parity_official.json"}
FIXTURE_COMMAND = ("KERAS_PNIL_DATA_DIR=../shared/datasets python benchmarks/autoattack_parity.py "
                   "--make-fixture tests/fixtures")
BENCHMARKS = Path(__file__).resolve().parent


# ---------------------------------------------------------------- the official side (PyTorch only)
def official_autoattack(torch_model, x: np.ndarray, y: np.ndarray, norm: str, epsilon: float,
                        batch_size: int = OFFICIAL_BATCH, seed: int = 0, threads: int | None = None) -> dict:
    """The official AutoAttack's `standard` version on NHWC images: per-image robust and clean flags, and the
    seconds of its `run_standard_evaluation` call. `threads` sets PyTorch's CPU threads (default: its own)."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    try:
        from pyautoattack import AutoAttack
    except ImportError:  # the GitHub package's name
        from autoattack import AutoAttack
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(np.asarray(y, np.int64))
    start = time.perf_counter()
    adversary = AutoAttack(torch_model, norm=OFFICIAL_NORMS[norm], eps=epsilon, version="standard", seed=seed,
                           device="cpu")
    _, y_adv = adversary.run_standard_evaluation(images, labels, batch_size=batch_size)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        clean = torch.cat([torch_model(images[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return {"robust": (y_adv == labels).numpy().astype(bool).tolist(),
            "clean": (clean == labels).numpy().astype(bool).tolist(), "attack_seconds": seconds}


def official_child(argv: list[str]) -> None:
    """`--official-child MODEL.pt IMAGES.npz NORM EPSILON BATCH THREADS OUT.json`: the official script, on its
    own (THREADS 0: PyTorch's own choice)."""
    import logging

    import torch

    model_path, images_path, norm, epsilon, batch, threads, out = argv
    logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stderr)
    sys.path.insert(0, str(BENCHMARKS))  # torch_models' classes, for unpickling the network
    model = torch.load(model_path, weights_only=False).eval()
    data = np.load(images_path)
    result = official_autoattack(model, data["x"], data["y"], norm, float(epsilon), int(batch),
                                 threads=int(threads) or None)
    result["threads"] = torch.get_num_threads()
    Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------- the two sides as whole processes
def _timed_process(command: list, log: Path, side: str) -> tuple[float, float]:
    """Runs `command` as a whole process, its output kept in `log`; (wall seconds, load average after)."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds, load = time.perf_counter() - start, os.getloadavg()[0]
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"{side} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return seconds, load


def run_official(torch_path: Path, images_path: Path, norm: str, epsilon: float, threads: int, work: Path) -> dict:
    out = work / f"official-{norm}.json"
    command = [sys.executable, __file__, "--official-child", str(torch_path), str(images_path), norm, str(epsilon),
               str(OFFICIAL_BATCH), str(threads), str(out)]
    seconds, load = _timed_process(command, work / f"official-{norm}.log", "the official AutoAttack")
    result = json.loads(out.read_text())
    return {**result, "seconds": seconds, "load": load, "command": " ".join(command[1:])}


def run_ours(model_path: Path, images_path: Path, images: int, norm: str, epsilon: float, work: Path) -> dict:
    out = work / f"ours-{norm}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh evaluation, not one resumed from an earlier run
    executable = Path(sys.executable).with_name("keras-pnil-evaluate")
    command = [str(executable) if executable.exists() else "keras-pnil-evaluate", str(model_path), "--data",
               str(images_path), "--num-images", str(images), "--epsilon", str(epsilon), "--norm", norm,
               "--out", str(out)]
    seconds, load = _timed_process(command, work / f"ours-{norm}.log", "keras-pnil-evaluate")
    record = json.loads((out / "results.json").read_text())["models"][0]
    common = record["plan"]["common_images"]
    if common != list(range(images)):
        raise SystemExit(f"{out}/results.json covers images {common[:5]}...: not the {images} given in order")
    return {"robust": [bool(v) for v in record["worst_case_per_image"]], "seconds": seconds, "load": load,
            "checks": [c.get("name", c) if isinstance(c, dict) else c for c in record.get("checks", [])],
            "command": "keras-pnil-evaluate " + " ".join(command[1:])}


# ---------------------------------------------------------------- the models
def mnist_test(images: int) -> tuple[np.ndarray, np.ndarray]:
    import keras_pnil as kp

    _, (x, y) = kp.data.load_dataset("mnist")
    if images > len(x):
        raise SystemExit(f"--images {images}: MNIST's test split has {len(x)}")
    return x[:images], y[:images].astype(np.int64)


def same_network_in_pytorch(model, x: np.ndarray):
    """`from_keras(model)` and the largest logit difference on `x`; stops the script above LOGIT_TOLERANCE."""
    sys.path.insert(0, str(BENCHMARKS))
    from torch_models import from_keras, largest_logit_difference

    torch_model = from_keras(model)
    difference = largest_logit_difference(model, torch_model, x)
    if not difference <= LOGIT_TOLERANCE:
        raise SystemExit(f"{model.name}: the PyTorch copy's logits differ from Keras' by up to {difference:.3g} "
                         f"(> {LOGIT_TOLERANCE:g}): not the same network; the comparison would mean nothing")
    return torch_model, difference


def training_of(path: Path) -> str:
    """How a run's model was trained (its config.json beside it), else ''."""
    config = path.parent / "config.json"
    if not config.exists():
        return ""
    c = json.loads(config.read_text())
    eps = "" if c.get("method") == "clean" else f" at L∞ ε={c.get('epsilon'):.3g}"
    return f"{c.get('method')}{eps}, {c.get('epochs')} epochs, {c.get('architecture')}"


def compare(model_name: str, path: Path, norms: list[str], epsilons: dict, x, y, work: Path,
            threads: int = 0):
    """Yields one row per norm as soon as both sides have run it."""
    import keras
    import torch

    model = keras.saving.load_model(path, compile=False)
    torch_model, difference = same_network_in_pytorch(model, x)
    print(f"{model_name}: PyTorch copy of {path}; largest logit difference on {len(x)} images "
          f"{difference:.2e} (<= {LOGIT_TOLERANCE:g})", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    torch_path, images_path = work / "model.pt", work / "images.npz"
    torch.save(torch_model, torch_path)
    np.savez(images_path, x=x, y=y)
    for norm in norms:
        official = run_official(torch_path, images_path, norm, epsilons[norm], threads, work)
        print(f"  {norm}: official {np.mean(official['robust']):.2%} in {official['seconds']:.1f} s", flush=True)
        ours = run_ours(path, images_path, len(x), norm, epsilons[norm], work)
        print(f"  {norm}: ours {np.mean(ours['robust']):.2%} in {ours['seconds']:.1f} s", flush=True)
        theirs, mine = np.array(official["robust"]), np.array(ours["robust"])
        yield {"model": model_name, "path": str(path), "training": training_of(path), "norm": norm,
               "epsilon": epsilons[norm], "images": len(x), "logit_difference": difference,
               "clean": float(np.mean(official["clean"])),
               "official": {"accuracy": float(theirs.mean()), "seconds": official["seconds"],
                            "attack_seconds": official["attack_seconds"], "threads": official["threads"],
                            "load_average_at_end": official["load"], "command": official["command"]},
               "ours": {"accuracy": float(mine.mean()), "seconds": ours["seconds"],
                        "load_average_at_end": ours["load"], "command": ours["command"]},
               "disagree": int((theirs != mine).sum()),
               "robust_only_for_ours": int((mine & ~theirs).sum()),
               "robust_only_for_official": int((theirs & ~mine).sum()),
               "accuracy_met": bool(mine.mean() <= theirs.mean() + ACCURACY_MARGIN + 1e-12),
               "speed_met": bool(ours["seconds"] <= official["seconds"])}


def table(rows: list[dict]) -> str:
    threads = rows[0]["official"]["threads"]
    lines = [f"AutoAttack `standard`, official (pyautoattack, PyTorch CPU, {threads} threads) against keras-pnil "
             "(`keras-pnil-evaluate`), the first MNIST test images; times are whole processes.", "",
             "| model | norm, ε | images | clean % | official % | ours % | disagree (ours robust only / "
             "official robust only) | official s | ours s | speed | accuracy target | speed target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, k = r["official"], r["ours"]
        lines.append(f"| {r['model']} | {r['norm']} {r['epsilon']:g} | {r['images']} | {100 * r['clean']:.1f} | "
                     f"{100 * o['accuracy']:.1f} | {100 * k['accuracy']:.1f} | {r['disagree']} "
                     f"({r['robust_only_for_ours']} / {r['robust_only_for_official']}) | {o['seconds']:.0f} | "
                     f"{k['seconds']:.0f} | {o['seconds'] / k['seconds']:.2f}x | "
                     f"{'met' if r['accuracy_met'] else 'MISSED'} | {'met' if r['speed_met'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: list[dict], torch_version: str, autoattack_version: str) -> None:
    """`out` (.json: the rows and how they were made) and the table beside it (.md), each written atomically."""
    from keras_pnil.files import atomic_write_json, atomic_write_text

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_count": os.cpu_count(),
            "torch": torch_version, "pyautoattack": autoattack_version, "command": " ".join(sys.argv)}
    atomic_write_json(out, {**meta, "rows": rows})
    atomic_write_text(out.with_suffix(".md"), table(rows))


# ---------------------------------------------------------------- the tests' fixture
def tiny_cnn(seed: int = 0):
    """The fixture's network: two 4×4 stride-2 convolutions (4, 8) and the logits, 4,518 weights."""
    import keras

    layers = keras.layers
    return keras.Sequential([keras.Input((28, 28, 1)),
                             layers.Conv2D(4, 4, strides=2, padding="same", activation="relu", name="conv1"),
                             layers.Conv2D(8, 4, strides=2, padding="same", activation="relu", name="conv2"),
                             layers.Flatten(), layers.Dense(10, name="logits")], name="tiny_cnn")


def make_fixture(directory: Path) -> None:
    import keras
    import torch

    import keras_pnil as kp
    from keras_pnil.files import atomic_write_json

    (x_train, y_train), _ = kp.data.load_dataset("mnist")
    keras.utils.set_random_seed(0)
    model = tiny_cnn()
    trainer = kp.adversarial(model, "nfgsm", FIXTURE_TRAINING_EPSILON)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x_train[:20000], y_train[:20000], batch_size=100, epochs=2, verbose=0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / FIXTURE_FILES["model"])
    x, y = mnist_test(FIXTURE_IMAGES)
    np.savez_compressed(directory / FIXTURE_FILES["images"], x=x, y=y)
    torch_model, difference = same_network_in_pytorch(model, x)
    import pyautoattack

    record = {"command": FIXTURE_COMMAND, "pyautoattack": pyautoattack.__version__, "torch": torch.__version__,
              "version": "standard", "seed": 0, "images": FIXTURE_IMAGES, "threads": FIXTURE_THREADS,
              "logit_difference": difference,
              "network": f"tiny_cnn in benchmarks/autoattack_parity.py, NFGSM ε={FIXTURE_TRAINING_EPSILON}, "
                         "2 epochs on 20,000 MNIST training images",
              "norms": {}}
    for norm, epsilon in FIXTURE_EPSILONS.items():
        result = official_autoattack(torch_model, x, y, norm, epsilon, threads=FIXTURE_THREADS)
        record["clean"] = result["clean"]
        record["norms"][norm] = {"epsilon": epsilon, "robust": result["robust"],
                                 "accuracy": float(np.mean(result["robust"]))}
        print(f"official {norm} ε={epsilon}: {np.mean(result['robust']):.2%} robust of {len(x)} "
              f"(clean {np.mean(result['clean']):.2%})")
    atomic_write_json(directory / FIXTURE_FILES["official"], record)
    print(f"wrote {', '.join(str(directory / f) for f in FIXTURE_FILES.values())}")


# ---------------------------------------------------------------- the command
def _pairs(text: str, option: str) -> dict:
    try:
        return dict(item.split("=", 1) for item in text.split(",") if item)
    except ValueError:
        raise SystemExit(f"{option} {text!r}: give NAME=VALUE pairs separated by commas") from None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--official-child":
        return official_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fgsm-rs=runs/parity/fgsm-rs/model.keras,"
                                            "clean=runs/parity/clean/model.keras",
                        help="NAME=PATH.keras pairs, comma-separated")
    parser.add_argument("--images", type=int, default=1000, help="the first N MNIST test images (default 1000)")
    parser.add_argument("--norms", default="linf,l2", help="comma-separated, from linf, l2, l1 (l1: give its ε)")
    parser.add_argument("--epsilons", default=",".join(f"{k}={v}" for k, v in EPSILONS.items()),
                        help="NORM=ε pairs (default linf=0.3,l2=2.0)")
    parser.add_argument("--work", default="runs/parity/work", help="the two sides' files and logs")
    parser.add_argument("--official-threads", type=int, default=0,
                        help="PyTorch's CPU threads for the official script (default: PyTorch's own choice)")
    parser.add_argument("--out", help="write the results here (.json) and the table beside it (.md)")
    parser.add_argument("--make-fixture", metavar="DIR", help="write the tests' fixture into DIR and stop")
    args = parser.parse_args()
    try:
        import pyautoattack  # noqa: F401
        import torch
    except ImportError as error:
        raise SystemExit(f"{error}: pip install torch pyautoattack==0.2.0 (benchmark dependencies)") from None
    if args.make_fixture:
        return make_fixture(Path(args.make_fixture))
    norms = [n for n in args.norms.split(",") if n]
    unknown = [n for n in norms if n not in OFFICIAL_NORMS]
    if unknown:
        parser.error(f"--norms {','.join(unknown)}: the official standard version here is {', '.join(OFFICIAL_NORMS)}")
    epsilons = {k: float(v) for k, v in _pairs(args.epsilons, "--epsilons").items()}
    models = {name: Path(path) for name, path in _pairs(args.models, "--models").items()}
    missing = [str(p) for p in models.values() if not p.exists()] + [n for n in norms if n not in epsilons]
    if missing:
        parser.error(f"missing: {', '.join(missing)} (train the models first, see docs/benchmarks.md; every norm "
                     "needs an ε in --epsilons)")
    if args.out and not args.out.endswith(".json"):
        parser.error(f"--out {args.out}: give a .json path (the table goes beside it as .md)")
    x, y = mnist_test(args.images)
    rows = []
    for name, path in models.items():
        for row in compare(name, path, norms, epsilons, x, y, Path(args.work) / name, args.official_threads):
            rows.append(row)
            if args.out:  # after every case, so that a stopped run keeps what it finished
                write_results(Path(args.out), rows, torch.__version__, pyautoattack.__version__)
    print(table(rows))
    if args.out:
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    missed = [f"{r['model']} {r['norm']}" for r in rows if not (r["accuracy_met"] and r["speed_met"])]
    print(f"targets (ours <= official + {100 * ACCURACY_MARGIN:.1f} points, ours at least as fast): "
          f"{'met on every case' if not missed else 'MISSED on ' + ', '.join(missed)}")


if __name__ == "__main__":
    main()
