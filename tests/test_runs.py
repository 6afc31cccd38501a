import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

from keras_pnil import history, recipe, runs
from keras_pnil.layers import DEFAULT_BIAS, find_pnil


@pytest.mark.parametrize("options, message", [
    ({"epochs": -1}, "epochs must be an integer >= 1; got -1"),
    ({"train_size": 0}, "train_size must be an integer >= 1; got 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1; got 0"),
    ({"fold": 10}, "fold must be one of 0-9"),
    ({"epsilon": "2"}, "epsilon must lie in"),
    ({"base_lr": 0.0}, "base_lr must be a positive number"),
    ({"base_lr": 1e-2, "max_lr": 1e-3}, "max_lr must be >= base_lr"),
    ({"dataset": "svhn"}, "Unknown data set 'svhn'"),
    ({"method": "madry"}, "Unknown training method 'madry'"),
    ({"learning_rate": 0.1}, r"Unknown training option\(s\) \['learning_rate'\]"),
    ({"method": "nfgsm", "eot_samples": 0}, "eot_samples must be an integer >= 1; got 0"),
    ({"pnil_bias": -30}, r"pnil_bias \(the PNIL's initial B, a log-variance\) must be a number in \[-20.0, 4.0\]"),
    ({"patience": 0}, "patience must be an integer >= 1; got 0"),
    ({"min_delta": 1.5}, r"min_delta \(the fraction a new low must lie below the best\) must be in \[0, 1\); got 1.5"),
])
def test_training_config_names_each_bad_option(options, message):
    with pytest.raises(ValueError, match=message):
        runs.training_config(options)


def test_training_config_fills_defaults_and_the_datasets_epsilon():
    config = runs.training_config({"dataset": "fashion_mnist", "method": "rfgsm", "alpha_ratio": 1.25})
    assert config["epsilon"] == pytest.approx(4 / 255) and config["epochs"] == runs.TRAIN_DEFAULTS["epochs"]
    assert config["method_options"] == {"alpha": pytest.approx(1.25 * 4 / 255)}
    assert runs.training_config({"epsilon": "8/255"})["epsilon"] == pytest.approx(8 / 255)


def test_evaluation_images_are_never_trained_or_validated_on():
    n_train, n_test = 600, 200
    data = ((np.arange(n_train)[:, None], np.arange(n_train)), (np.arange(n_test)[:, None] + 10**6, np.arange(n_test)))
    for fold in (None, 3):
        config = runs.training_config({"fold": fold, "train_size": 100, "validation_size": 50})
        train_idx, val_idx = runs.training_indices(config, n_train, n_test)
        config["validation_indices"] = val_idx.tolist()
        x, _ = runs.evaluation_images(config, data, 150, seed=0)
        held_out = set(x[:, 0].tolist())
        assert len(held_out) == 150 and not held_out & set(train_idx.tolist())
        assert not held_out & {10**6 + i for i in val_idx.tolist()}
        again, _ = runs.evaluation_images(config, data, 150, seed=0)
        np.testing.assert_array_equal(x, again)


def test_a_directory_without_a_finished_run_is_named(tmp_path):
    assert not runs.is_finished(tmp_path)
    with pytest.raises(runs.RunError, match="is not a finished training run"):
        runs.load_run(tmp_path)
    (tmp_path / runs.CONFIG).write_text(json.dumps({"dataset": "mnist"}))
    with pytest.raises(runs.RunError, match="it has no model.keras"):
        runs.load_run(tmp_path)
    (tmp_path / runs.MODEL).write_text("not a Keras file")
    with pytest.raises(runs.RunError, match=r"is not a Keras model file \(a .keras zip archive\)"):
        runs.load_run(tmp_path)
    with zipfile.ZipFile(tmp_path / runs.MODEL, "w") as archive:
        archive.writestr("config.json", "{}")  # a zip, but not a model Keras can build
    with pytest.raises(runs.RunError, match="cannot load the model"):
        runs.load_run(tmp_path)


def test_the_last_checkpoint_keeps_the_final_weights_and_marks_the_run_done(tmp_path, mnist):
    config = runs.training_config({"architecture": "wong_mnist", "lr_schedule": "one_cycle", "max_lr": 5e-3,
                                   "checkpoint": "last", "train_size": 300, "validation_size": 100, "epochs": 1,
                                   "monitor_images": 20, "method": "rfgsm", "epsilon": 0.3})
    summary = runs.train_run(config, tmp_path / "run", mnist)
    assert "1 epochs this session" in summary and runs.is_finished(tmp_path / "run")
    assert not (tmp_path / "run" / runs.BEST).exists()  # no checkpoint selection
    stored, model = runs.load_run(tmp_path / "run")
    assert stored["architecture"] == "wong_mnist" and model.name == "wong_mnist"
    with pytest.raises(ValueError, match="Unknown checkpoint 'middle'"):
        runs.training_config({"checkpoint": "middle"})


def test_training_to_convergence_stops_once_the_validation_loss_stalls(tmp_path, mnist):
    # A learning rate too small to matter: the validation loss wanders by rounding, so with patience 1 the run
    # stops at the first epoch without a new low, long before its tenth.
    config = runs.training_config({"architecture": "wong_mnist", "base_lr": 1e-12, "max_lr": 1e-12, "epochs": 10,
                                   "patience": 1, "train_size": 200, "validation_size": 100, "monitor_images": 10,
                                   "method": "fgsm"})
    runs.train_run(config, tmp_path / "run", mnist)
    done = json.loads((tmp_path / "run" / runs.DONE).read_text())
    losses = history.read_history(tmp_path / "run" / runs.HISTORY)["val_loss"]
    assert done["epochs"] == len(losses) < 10
    assert done["stopped"].startswith("converged: val_loss not improved (by more than 0%) for 1 epochs")
    assert losses[-1] >= min(losses[:-1]) and losses[:-1] == sorted(losses[:-1], reverse=True)  # first stall: stop
    assert runs.is_finished(tmp_path / "run")


def test_the_pnil_starts_at_the_initial_bias_asked_for():
    trainer = recipe.build_trainer(runs.training_config({"pnil": True, "pnil_bias": -2.0}))
    np.testing.assert_array_equal(find_pnil(trainer).bias.numpy(), -2.0)
    default = recipe.build_trainer(runs.training_config({"pnil": True}))
    np.testing.assert_array_equal(find_pnil(default).bias.numpy(), DEFAULT_BIAS)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(argv: list, ports: list) -> list:
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    return [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "CI": "1", "TF_CONFIG": json.dumps(
                                 {"cluster": cluster, "task": {"type": "worker", "index": i}})})
            for i in range(len(ports))]


def test_multi_worker_training_resumes_and_ends_with_the_same_weights(tmp_path, data_dir):
    # Two workers on loopback ports, as two machines would be (TF_CONFIG): killed after an epoch,
    # started again, they resume from their backups and finish with the same weights.
    argv = [sys.executable, "-m", "keras_pnil.cli", "--data-dir", str(data_dir), "--dataset", "mnist",
            "--architecture", "wong_mnist", "--method", "nfgsm", "--pnil", "--strategy", "multi_worker",
            "--train-size", "3000", "--epochs", "3", "--batch-size", "50", "--validation-size", "100",
            "--monitor-images", "20", "--out", str(tmp_path / "run")]
    chief, other = tmp_path / "run", tmp_path / "run" / "worker-1"
    workers = _workers(argv, _free_ports(2))
    deadline = time.time() + 300
    while time.time() < deadline and all(w.poll() is None for w in workers):
        if all((d / "history.csv").exists() and len((d / "history.csv").read_text().splitlines()) >= 2
               for d in (chief, other)):  # an epoch done, and backed up, on both workers
            break
        time.sleep(0.2)
    assert all(w.poll() is None for w in workers), "training ended before it could be interrupted"
    for w in workers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    assert not (chief / "done.json").exists() and (chief / "backup").exists() and (other / "backup").exists()
    workers = _workers(argv, _free_ports(2))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert (chief / "done.json").exists() and (chief / "model.keras").exists()  # the chief's directory is the run
    assert (other / "model.keras").exists() and not (other / "worker-1").exists()
    epochs = [int(line.split(",")[0]) for line in (chief / "history.csv").read_text().strip().splitlines()[1:]]
    assert epochs == [0, 1, 2] and "epochs this session" in outputs[0] and "3 epochs this session" not in outputs[0]
    weights = [keras.models.load_model(d / "model.keras").get_weights() for d in (chief, other)]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
