"""Every bad input through the real commands: one line naming the culprit, the right exit status, nothing done."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

COMMANDS = {"train": "train_main", "evaluate": "evaluate_main", "reproduce": "reproduce_main"}

# (command, arguments, exit status, what the last line of stderr must contain)
CASES = [
    ("train", ["--epochs", "-1"], 2, "argument --epochs: must be an integer >= 1; got -1"),
    ("train", ["--epochs", "ten"], 2, "argument --epochs: expected an integer >= 1; got 'ten'"),
    ("train", ["--train-size", "0"], 2, "argument --train-size: must be an integer >= 1; got 0"),
    ("train", ["--batch-size", "0"], 2, "argument --batch-size: must be an integer >= 1; got 0"),
    ("train", ["--fold", "12"], 2, "argument --fold: must be one of 0-9 (the 5×2 protocol); got 12"),
    ("train", ["--epsilon", "2"], 2, "argument --epsilon: epsilon must lie in (0, 1) for pixels in [0, 1]; got '2'"),
    ("train", ["--base-lr", "0"], 2, "argument --base-lr: must be a positive number; got 0"),
    ("train", ["--eot-samples", "0"], 2, "argument --eot-samples: must be an integer >= 1; got 0"),
    ("train", ["--dataset", "svhn"], 2, "argument --dataset: invalid choice: 'svhn'"),
    ("train", ["--method", "madry"], 2, "argument --method: invalid choice: 'madry'"),
    ("train", ["--data-dir", "{tmp}/nowhere"], 1, "error: Data directory"),
    ("train", ["--data-dir", "{tmp}/truncated"], 1, "truncated"),
    ("train", ["--config", "{tmp}/missing.json"], 1, "error: cannot read config"),
    ("train", ["--config", "{tmp}/zero_epochs.json"], 1, "error: epochs must be an integer >= 1; got 0."),
    ("evaluate", ["{tmp}/run", "--num-images", "0"], 2, "argument --num-images: must be an integer >= 1; got 0"),
    ("evaluate", ["{tmp}/run", "--eot-samples", "0"], 2, "argument --eot-samples: must be an integer >= 1; got 0"),
    ("evaluate", ["{tmp}/run", "--set", "spsa.samples=7"], 2, "argument --set: spsa.samples must be even"),
    ("evaluate", ["{tmp}/run", "--set", "pgd.stepz=3"], 2, "argument --set: attack 'pgd' has no setting 'stepz'"),
    ("evaluate", ["{tmp}/run", "--set", "pgd.steps"], 2, "argument --set: expected ATTACK.FIELD=VALUE"),
    ("evaluate", ["{tmp}/run", "--budget", "huge"], 2, "argument --budget: invalid choice: 'huge'"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/good.npz", "--plan", "{tmp}/none.json"], 1,
     "error: cannot read plan"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/good.npz", "--plan", "{tmp}/plan.json",
                  "--budget", "quick"], 1, "--plan and --budget both choose a starting plan"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/nan.npz"], 1,
     "nan.npz images must be finite; found 1 NaN"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/onehot.npz"], 1, "labels look one-hot"),
    ("evaluate", ["{tmp}/two.keras", "--epsilon", "0.1", "--data", "{tmp}/good.npz"], 1,
     "has 2 outputs ('logits', 'aux'): choose its logits output with --output NAME"),
    ("evaluate", ["{tmp}/two.keras", "--epsilon", "0.1", "--data", "{tmp}/good.npz", "--output", "probs"], 1,
     "has no output 'probs'"),
    ("evaluate", ["{tmp}/run", "--attacks", "pgd,cw"], 2, "argument --attacks: Unknown attack 'cw'"),
    ("evaluate", ["{tmp}/run", "--epsilon", "8/0"], 2, "argument --epsilon: epsilon must be a number or a fraction"),
    ("evaluate", ["{tmp}/empty"], 1, "is not a finished training run: cannot read config.json"),
    ("evaluate", ["{tmp}/not_keras"], 1, "model.keras is not a Keras model file"),
    ("evaluate", ["{tmp}/notes.txt"], 1, "notes.txt is neither a run directory of keras-pnil-train nor a Keras model"),
    ("evaluate", ["{tmp}/m.keras", "--data", "{tmp}/good.npz"], 1, "--epsilon is required for a model file"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1"], 1, "needs images: --dataset NAME or --data FILE.npz"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/range.npz"], 1,
     "range.npz images must lie in [0, 1]; found values in [255, 255]"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/uint8.npz"], 1,
     "x must hold floats in [0, 1]; got uint8 (divide 8-bit pixels by 255)"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/shape.npz"], 1,
     "model 'user' cannot take images shaped (32, 32, 3): it takes images shaped (28, 28, 1)"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/labels.npz"], 1,
     "labels must lie in [0, 10) for model 'user', which has 10 classes; got 12 (label 3)"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/lengths.npz"], 1,
     "lengths.npz: x holds 4 images but y 3 labels"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/no_y.npz"], 1,
     "must hold arrays 'x' (images) and 'y' (labels); it lacks 'y'"),
    ("evaluate", ["{tmp}/m.keras", "--epsilon", "0.1", "--data", "{tmp}/good.npz", "--custom-objects",
                  "{tmp}/none.py"], 1, "custom objects file"),
    ("reproduce", ["--suite", "{tmp}/none.json"], 1, "error: cannot read suite"),
    ("reproduce", ["--budget", "huge"], 1, "has no budget 'huge'"),
    ("reproduce", ["--datasets", "svhn"], 1, "unknown data set(s) ['svhn']"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files the bad inputs point at."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "zero_epochs.json").write_text(json.dumps({"epochs": 0}))
    (tmp / "truncated" / "mnist").mkdir(parents=True)
    for stem, dims in (("train-images-idx3-ubyte", (2051, 60000, 28, 28)), ("train-labels-idx1-ubyte", (2049, 60000)),
                       ("t10k-images-idx3-ubyte", (2051, 10000, 28, 28)), ("t10k-labels-idx1-ubyte", (2049, 10000))):
        header = b"".join(d.to_bytes(4, "big") for d in dims)
        (tmp / "truncated" / "mnist" / stem).write_bytes(header + bytes(20))  # the records are missing
    (tmp / "empty").mkdir()
    (tmp / "not_keras").mkdir()
    (tmp / "not_keras" / "config.json").write_text(json.dumps({"dataset": "mnist"}))
    (tmp / "not_keras" / "model.keras").write_text("not a zip archive")
    (tmp / "notes.txt").write_text("not a model")
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)],
                     name="user").save(tmp / "m.keras")
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Flatten()(inputs)
    keras.Model(inputs, [keras.layers.Dense(10, name="logits")(hidden), keras.layers.Dense(3, name="aux")(hidden)]
                ).save(tmp / "two.keras")
    (tmp / "plan.json").write_text(json.dumps({"preset": "quick"}))
    images, labels = np.full((4, 28, 28, 1), 0.5, np.float32), np.arange(4)
    with_nan = images.copy()
    with_nan[2, 0, 0, 0] = np.nan
    for name, arrays in {"good": {"x": images, "y": labels}, "range": {"x": images * 510, "y": labels},
                         "uint8": {"x": (images * 255).astype(np.uint8), "y": labels},
                         "shape": {"x": np.full((4, 32, 32, 3), 0.5, np.float32), "y": labels},
                         "labels": {"x": images, "y": np.array([0, 1, 2, 12])},
                         "lengths": {"x": images, "y": labels[:3]}, "no_y": {"x": images},
                         "nan": {"x": with_nan, "y": labels}, "onehot": {"x": images, "y": np.eye(10)[labels]}}.items():
        np.savez(tmp / f"{name}.npz", **arrays)
    return tmp


def _run(command, argv, tmp):
    argv = [a.format(tmp=tmp) for a in argv]
    if command != "reproduce":
        argv += ["--out", str(tmp / f"out-{abs(hash(tuple(argv)))}")]
    code = f"import sys; from keras_pnil.cli import {COMMANDS[command]} as main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_PNIL_DATA_DIR"} if "--data-dir" in argv else os.environ
    return argv, subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                                env=env)


def test_every_bad_input_gets_one_line_and_the_right_exit_status(inputs):
    # Three at a time: each is a fresh Python that imports TensorFlow.
    with ThreadPoolExecutor(3) as pool:
        done = list(pool.map(lambda case: _run(case[0], case[1], inputs), CASES))
    failures = []
    for (command, _, status, expected), (argv, result) in zip(CASES, done, strict=True):
        lines = result.stderr.strip().splitlines()
        print(f"keras-pnil-{command} {' '.join(argv)} -> exit {result.returncode}: {lines[-1] if lines else ''}")
        ours = [line for line in lines if "error:" in line]
        ok = (result.returncode == status and lines and expected in lines[-1] and len(ours) == 1
              and "Traceback" not in result.stderr)
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        if out is not None and (os.path.exists(os.path.join(out, "done.json")) or os.path.exists(out)):
            ok = False  # rejected before any work: nothing written, let alone marked finished
        if not ok:
            failures.append(f"{command} {argv}: exit {result.returncode}, stderr tail {lines[-3:]}")
    assert not failures, "\n".join(failures)


def test_debug_shows_the_traceback(inputs):
    _, result = _run("evaluate", ["{tmp}/empty", "--debug"], inputs)
    assert result.returncode != 0 and "Traceback" in result.stderr and "RunError" in result.stderr
