"""The CIFAR-10 references' recipes: crop and flip in the pipeline, PyTorch's SGD, Wong et al.'s cyclic rate and
early stop, and every shipped cifar10_* configuration trained and evaluated through the commands on synthetic
files in the official binary layout."""

import csv
import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import cli, data, experiments, models, recipe, reproduce, runs
from keras_pnil.augmentation import crop_flip
from keras_pnil.callbacks import STOP_RULES, CatastrophicOverfittingMonitor, StopRule
from keras_pnil.schedules import CoupledSGD
from keras_pnil.summary import published_markdown

CIFAR_CONFIGS = sorted(p.stem for p in experiments.TRAIN_CONFIGS.glob("cifar10_*.json")
                       if p.stem not in ("cifar10_nfgsm", "cifar10_rfgsm"))  # the paper's Table 1 files


def _windows(images, pad):
    """Every (row, column, flipped) window of each zero-padded image: {image index: {window bytes: (r, c, f)}}."""
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    size = images.shape[1]
    return [{(w[:, ::-1] if f else w).tobytes(): (r, c, f)
             for r in range(2 * pad + 1) for c in range(2 * pad + 1) for f in (0, 1)
             for w in [padded[i, r:r + size, c:c + size]]} for i in range(len(images))]


def test_crop_keeps_the_shape_and_is_a_shifted_copy_with_zero_padding():
    images = np.random.default_rng(0).uniform(0.1, 1.0, (64, 32, 32, 3)).astype("float32")  # no zero pixel
    out = crop_flip(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == images.shape
    found = [windows.get(o.tobytes()) for windows, o in zip(_windows(images, 4), out, strict=True)]
    assert None not in found  # each output is one window of its own zero-padded image
    shifts = {(r, c) for r, c, _ in found}
    assert len(shifts) > 20 and {r for r, _ in shifts} == set(range(9))  # offsets 0..8 drawn (64 images)
    assert ((out == 0).reshape(64, -1).any(1) == [(r, c) != (4, 4) for r, c, _ in found]).all()  # black border


def test_flip_mirrors_left_right_about_half_the_time():
    images = np.random.default_rng(1).random((200, 8, 8, 3)).astype("float32")
    out = crop_flip(tf.constant(images), tf.constant([0, 7], tf.int64), pad=0).numpy()
    same = [np.array_equal(o, x) for o, x in zip(out, images, strict=True)]
    mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images, strict=True)]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))  # each is the image or its mirror
    assert 70 <= sum(mirrored) <= 130  # Binomial(200, 1/2): 100 ± 4.2σ


def test_augmentation_is_seeded_and_new_each_epoch():
    x = np.random.default_rng(2).random((12, 32, 32, 3)).astype("float32")

    def epochs(seed, count=2):
        ds = data.make_dataset(x, np.arange(12), batch_size=6, shuffle=False, seed=seed, augment="crop_flip")
        return [np.concatenate([b[0].numpy() for b in ds]) for _ in range(count)]

    first, again, other = epochs(5), epochs(5), epochs(6)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other[0])
    plain = data.make_dataset(x, np.arange(12), batch_size=6, shuffle=False, augment="none")
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in plain]), x)
    with pytest.raises(ValueError, match="Unknown augmentation 'cutout'"):
        data.make_dataset(x, np.arange(12), augment="cutout")


def test_only_the_training_set_is_augmented(monkeypatch, tmp_path):
    made = []
    real = data.make_dataset
    monkeypatch.setattr(data, "make_dataset", lambda *a, **k: made.append(k) or real(*a, **k))
    monkeypatch.setattr(runs, "_fit", lambda *a: (_ for _ in ()).throw(RuntimeError("stop before training")))
    x, y = np.zeros((40, 32, 32, 3), "float32"), np.arange(40) % 10
    config = runs.training_config({"dataset": "cifar10", "augment": "crop_flip", "batch_size": 8})
    with pytest.raises(RuntimeError, match="stop before training"):
        runs.train_run(config, tmp_path / "run", data=((x, y), (x[:20], y[:20])))
    assert [(k.get("shuffle", True), k.get("augment", "none")) for k in made] == [(True, "crop_flip"),
                                                                                 (False, "none")]


def test_coupled_sgd_one_step_equals_pytorchs_rule_by_hand():
    rate, momentum, decay = 0.2, 0.9, 5e-4
    p0, g1, g2 = np.array([1.0, -2.0, 0.5], "float32"), np.array([0.3, 0.1, -0.2], "float32"), \
        np.array([-0.1, 0.4, 0.2], "float32")
    variable = keras.Variable(p0)
    optimizer = CoupledSGD(learning_rate=rate, momentum=momentum, weight_decay=decay)
    optimizer.apply([g1], [variable])
    # PyTorch: d = g + wd·p; b = d (first step); p ← p − lr·b.
    b1 = g1 + decay * p0
    p1 = p0 - rate * b1
    np.testing.assert_allclose(variable.numpy(), p1, rtol=1e-6)
    optimizer.apply([g2], [variable])
    b2 = momentum * b1 + g2 + decay * p1
    np.testing.assert_allclose(variable.numpy(), p1 - rate * b2, rtol=1e-6)
    # Keras' own SGD decays outside the momentum (decoupled): a different second step.
    keras_variable = keras.Variable(p0)
    keras_sgd = keras.optimizers.SGD(learning_rate=rate, momentum=momentum, weight_decay=decay)
    keras_sgd.apply([g1], [keras_variable])
    keras_sgd.apply([g2], [keras_variable])
    assert np.abs(keras_variable.numpy() - (p1 - rate * b2)).max() > 1e-5


def test_coupled_sgd_and_the_cyclic_rate_follow_torch_step_for_step():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w0, x, y = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(8, 5)).astype("float32"), \
        rng.integers(0, 3, 8)
    steps = 10
    # Wong et al.'s CIFAR-10 optimizer and schedule (train_fgsm.py), on a linear layer.
    theirs = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([theirs], lr=0.2, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.0, max_lr=0.2, step_size_up=steps / 2,
                                                  step_size_down=steps / 2)
    # Ours, as the train command builds it from cifar10_fgsm_rs_wong's settings.
    config = {**runs.TRAIN_DEFAULTS, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
              "lr_schedule": "cyclic_lr", "max_lr": 0.2, "epochs": steps}
    ours = keras.Variable(w0)
    optimizer = recipe.make_optimizer(recipe.learning_rate(config, steps_per_epoch=1),
                                      **recipe.optimizer_options(config))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(torch.tensor(x) @ theirs, torch.tensor(y)).backward()
        opt.step()
        scheduler.step()
        logits = x @ ours.numpy()
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        softmax /= softmax.sum(1, keepdims=True)
        # The mean cross-entropy's gradient for the weights: xᵀ(softmax − onehot(y)) / n.
        optimizer.apply([x.T @ (softmax - np.eye(3, dtype="float32")[y]) / len(x)], [ours])
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), atol=1e-5)
    # CyclicLR also cycled the momentum (its default): 0.8 at the peak rate, 0.9 at rate 0, as ours.
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9 - 0.1 * float(optimizer.learning_rate) / 0.2)


def test_wongs_cyclic_rate_is_zero_at_the_ends_and_its_peak_at_the_middle():
    schedule = recipe.learning_rate({"lr_schedule": "cyclic_lr", "max_lr": 0.2, "epochs": 10}, steps_per_epoch=20)
    rates = [float(schedule(k)) for k in range(201)]
    assert rates[0] == 0.0 and rates[100] == pytest.approx(0.2) and rates[200] == pytest.approx(0.0, abs=1e-7)
    assert rates[50] == pytest.approx(0.1) and rates[199] == pytest.approx(0.2 / 100)
    assert np.argmax(rates) == 100 and all(np.diff(rates[:101]) > 0) and all(np.diff(rates[100:]) < 0)
    # Wong et al.'s MNIST one cycle (and GradAlign's) peaks at 2/5, from the progress after each update.
    one_cycle = recipe.learning_rate({"lr_schedule": "one_cycle", "max_lr": 0.3, "epochs": 10}, 20)
    assert float(one_cycle(79)) == pytest.approx(0.3) and float(one_cycle(0)) == pytest.approx(0.3 / 80)


@pytest.mark.parametrize("rule, readings, collapse", [
    ("wong", [0.30, 0.45, 0.50, 0.35, 0.10, 0.40], 4),  # 0.10 is 0.25 below the previous epoch's 0.35
    ("wong", [0.50, 0.35, 0.25, 0.20], None),  # falls slowly: never 0.2 below the epoch before
    ("best", [0.50, 0.35, 0.25, 0.20], 2),  # but 0.25 is 0.25 below the best, 0.50
    ("wong", [0.10, 0.30, 0.10, 0.05], None),  # 0.10 after 0.30 is exactly 0.2: not more
])
def test_the_early_stopping_rules_on_a_scripted_sequence(rule, readings, collapse):
    best = previous = stopped = None
    for epoch, accuracy in enumerate(readings):
        if STOP_RULES[rule].collapsed(accuracy, best, previous):
            stopped = epoch
            break
        best, previous = max(best or 0.0, accuracy), accuracy
    assert stopped == collapse


def test_wongs_rule_stops_on_the_training_batch_and_keeps_the_previous_epochs_weights(monkeypatch):
    keras.utils.set_random_seed(0)
    trainer = kp.adversarial(kp.models.small_cnn((8, 8, 3), filters=(2, 2), dense_units=8), "fgsm", 0.03)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(4)
    x, y = rng.random((32, 8, 8, 3)).astype("float32"), rng.integers(0, 10, 32)
    # Per epoch: the validation check, then the rule's own check on that epoch's training batch.
    readings = iter([0.9, 0.40, 0.9, 0.45, 0.9, 0.20, 0.9, 0.9])
    monkeypatch.setattr("keras_pnil.correctness.accuracy", lambda *a, **k: next(readings))
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    monitor = CatastrophicOverfittingMonitor(x[:8], y[:8], 0.03, steps=1, early_stop=True, rule=STOP_RULES["wong"],
                                             stop_batches=batches)
    weights = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(trainer.get_weights()))
    history = trainer.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[monitor, keep])
    assert monitor.collapsed_at == 3 and history.history["pgd_train_batch_accuracy"] == [0.40, 0.45, 0.20]
    for a, b in zip(trainer.get_weights(), weights[1], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="needs stop_batches"):
        CatastrophicOverfittingMonitor(x, y, 0.03, rule=StopRule(steps=5))


def test_the_suite_prices_and_validates_every_run_and_puts_published_rows_beside_ours():
    suite = reproduce.load_suite("cifar10")
    attacks = set(suite["attacks"])
    for budget in suite["budgets"]:
        for spec in reproduce.grid(suite, budget):
            reproduce.train_config(suite, budget, spec)  # validates
    assert {row["column"] for rows in suite["published"].values() for row in rows} <= attacks
    assert set(suite["published"]) == set(suite["methods"])
    record = {"run": "r/cifar10-fgsm-rs-wong-baseline", "method": "fgsm-rs-wong", "pnil": False, "clean": 0.8512,
              "pgd": 0.4433, "autoattack": 0.41}
    lines = published_markdown(suite["published"], [record]).splitlines()
    assert "| 86.06 | 46.06 | cifar10-fgsm-rs-wong-baseline | 85.1 | 44.3 (PGD) |" in lines[2]
    assert "| 83.34 | 43.21 | cifar10-fgsm-rs-wong-baseline | 85.1 | 41.0 (AUTOATTACK) |" in lines[3]
    assert any("gradalign" in line and "not run" in line for line in lines)
    # A published PNIL row stands beside our PNIL run only, a baseline row beside our baseline only.
    paper = [{"run": f"r/{name}", "method": "paper-nfgsm", "pnil": pnil, "clean": 0.7, "pgd": 0.5}
             for name, pnil in (("base", False), ("with-pnil", True))]
    rows = published_markdown({"paper-nfgsm": suite["published"]["paper-nfgsm"]}, paper).splitlines()[2:]
    assert [row.split(" | ")[6] for row in rows] == ["base", "with-pnil", "with-pnil"]


def _write_cifar(directory, per_file: int, seed: int = 0) -> None:
    """Synthetic CIFAR-10 in the official binary layout: per record, 1 label byte and 3,072 pixel bytes
    (1,024 red, 1,024 green, 1,024 blue, each row-major); five training files and a test file."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (per_file, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, per_file)
        (directory / name).write_bytes(records.tobytes())


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    _write_cifar(root / "cifar-10-batches-bin", per_file=60)  # 300 training and 60 test images
    return root


# The shipped networks, layer for layer, with 8 channels a stage: at full width PreActResNet-18 took 2-3 min a
# configuration here (2 loaded cores). Blocks, shortcuts, BatchNorm and padding are the shipped code's.
NARROW = (8, 8, 8, 8)


@pytest.fixture
def narrow_networks(monkeypatch):
    for name in ("preact_resnet18", "resnet11"):
        monkeypatch.setitem(models.ARCHITECTURES, name, functools.partial(models.ARCHITECTURES[name], widths=NARROW))


@pytest.mark.parametrize("name", CIFAR_CONFIGS)
def test_each_shipped_cifar10_configuration_trains_and_evaluates_through_the_commands(name, cifar_dir, tmp_path,
                                                                                      narrow_networks):
    run, out = tmp_path / "run", tmp_path / "evaluation"
    shipped = json.loads(experiments.train_config_path(name).read_text())
    tiny = ["--train-size", "64", "--batch-size", "32", "--epochs", "1", "--validation-size", "16",
            "--monitor-images", "8", "--monitor-eot", "1"]
    assert cli.train_main(["--config", name, "--data-dir", str(cifar_dir), *tiny, "--out", str(run)]) == 0
    config = json.loads((run / runs.CONFIG).read_text())
    for key in ("architecture", "method", "optimizer", "lr_schedule", "augment", "early_stop_rule", "checkpoint",
                "weight_decay"):
        assert config[key] == shipped.get(key, runs.TRAIN_DEFAULTS[key]), key
    _, trained = runs.load_run(run)
    assert trained.name.startswith(shipped["architecture"]) and trained.input_shape == (None, 32, 32, 3)
    assert config["n_train"] == 64 and runs.is_finished(run)
    if config["early_stop_rule"] == "wong":
        assert "pgd_train_batch_accuracy" in (run / runs.HISTORY).read_text()
    assert cli.evaluate_main([str(run), "--data-dir", str(cifar_dir), "--budget", "quick", "--num-images", "8",
                              "--attacks", "pgd",
                              "--set", "pgd.steps=2", "--set", "checks.enabled=false", "--out", str(out)]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["attack"] for r in rows} >= {"clean", "pgd"} and all(r["n_images"] == "8" for r in rows)
