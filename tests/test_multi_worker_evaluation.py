"""`keras-pnil-evaluate --strategy multi_worker` over two worker processes on loopback ports, as two machines
would run it (TF_CONFIG per process, the same command on each), against a one-device run of the same command:
the same adversarial images on every worker, the same results, and only the chief writes.

Run as a script (`python tests/test_multi_worker_evaluation.py PROBE ARGV...`), this file is one worker."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import cli, evaluation, plan, replicas

IMAGES = 40  # in chunks of 16 (`_probed`): chunks 0 and 2 go to worker 0, chunk 1 to worker 1
SETTINGS = {"pgd.steps": 5, "apgd-ce.steps": 5, "eot_samples": 2, "accuracy_draws": 3, "num_images": IMAGES,
            # The checks' attacks (Square as the witness, large-ε PGD, doubled PGD) on 12 images: one chunk, which
            # only the chief attacks, so the other worker takes the chief's model noise after each.
            "checks.images": 12, "checks.square_queries": 20}
TIMEOUT = 240


def _probed(probe: Path, argv: list) -> int:
    """The evaluate command on `argv` with chunks of 16 images, keeping what this process computed (each
    attack's images and the model's noise state after it, the chunks it attacked, the evaluation's result) in
    `probe`.npz and `probe`.json: a worker other than the chief writes nothing of its own."""
    images, noise, chunks, results = [], [], [], []
    run, attack_run, evaluate = replicas.Replicas.run, plan.AttackPlan.run, evaluation.evaluate

    def probed_run(self, attack, model, *args, **kwargs):
        images.append(run(self, attack, model, *args, **kwargs))
        noise.append([g.state.numpy().tolist() for g in replicas._noise_generators(model)])
        return images[-1]

    def probed_attack_run(self, *args, **kwargs):
        chunks.append([self.name, self.images[0], len(self.images)])
        return attack_run(self, *args, **kwargs)

    def probed_evaluate(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        results.append(result.to_dict())
        return result

    patches = [(replicas, "CHUNK", 16), (replicas.Replicas, "run", probed_run),
               (plan.AttackPlan, "run", probed_attack_run), (cli, "evaluate", probed_evaluate),
               (evaluation, "evaluate", probed_evaluate)]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(mock.patch.object(*patch))
        status = cli.evaluate_main(argv)
    np.savez(f"{probe}.npz", *images)
    Path(f"{probe}.json").write_text(json.dumps({"chunks": chunks, "noise": noise, "results": results}))
    return status


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    except OSError as err:
        pytest.skip(f"this platform cannot open local ports ({err}): the two workers talk through them")
    finally:
        for s in sockets:
            s.close()


def _model() -> keras.Model:
    """A random model (a PNIL): every draw of its noise must agree between the workers too."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = kp.PixelwiseNoiseInjection(seed=1, bias_initializer=keras.initializers.Constant(-3.0))(inputs)
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(10)(hidden), name="pnil_net")


def _argv(tmp_path, strategy: str, out: str) -> list:
    return [str(tmp_path / "net.keras"), "--data", str(tmp_path / "images.npz"), "--epsilon", "0.1", "--attacks",
            "pgd,apgd-ce", "--budget", "quick", "--strategy", strategy,
            *[f"--set={k}={v}" for k, v in SETTINGS.items()], "--out", str(tmp_path / out)]


def _workers(tmp_path, count: int) -> list:
    """`count` worker processes of one cluster on loopback ports, each running the same command."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(count)]}
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return [subprocess.Popen([sys.executable, __file__, str(tmp_path / f"worker{i}"),
                              *_argv(tmp_path, "multi_worker", "cluster")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                  "task": {"type": "worker", "index": i}})})
            for i in range(count)]


def _finish(processes: list) -> list:
    """Each process's output, once all have ended (killed, and the test failed, past `TIMEOUT`)."""
    try:
        outputs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()  # a worker waiting in a collective ignores SIGTERM
        pytest.fail(f"the workers did not end within {TIMEOUT} s: " + "\n".join(
            p.communicate()[0][-1500:] for p in processes))
    assert [p.returncode for p in processes] == [0] * len(processes), "\n".join(o[-3000:] for o in outputs)
    return outputs


def _probe(tmp_path, name: str) -> tuple[list, dict]:
    arrays = np.load(tmp_path / f"{name}.npz")
    return [arrays[f"arr_{i}"] for i in range(len(arrays.files))], json.loads((tmp_path / f"{name}.json").read_text())


def test_two_workers_give_the_one_device_results_and_only_the_chief_writes(tmp_path, monkeypatch):
    _model().save(tmp_path / "net.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", x=rng.uniform(size=(IMAGES, 8, 8, 1)).astype(np.float32),
             y=rng.integers(0, 10, IMAGES))
    workers = _workers(tmp_path, 2)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert _probed(tmp_path / "one", _argv(tmp_path, "default", "one")) == 0  # here, while the workers start
    outputs = _finish(workers)
    (one, one_probe), *probes = [_probe(tmp_path, name) for name in ("one", "worker0", "worker1")]

    # (attack, first image, images) of each chunk a worker attacked: the attacks' 40 images went to worker
    # c mod 2; the checks' 12 images from image 1 (Square, then PGD at large ε and with doubled steps) to the chief.
    ran = [sorted(map(tuple, probe["chunks"])) for _, probe in probes]
    assert ran[0] == [("apgd-ce", 0, 16), ("apgd-ce", 32, 8), ("pgd", 0, 16), ("pgd", 1, 12), ("pgd", 1, 12),
                      ("pgd", 32, 8), ("square", 1, 12)], ran[0]
    assert ran[1] == [("apgd-ce", 16, 16), ("pgd", 16, 16)], ran[1]
    # Every worker holds every attack's whole result: the one-device images, bit for bit.
    assert len(one) == 5  # PGD, APGD-CE, then the checks' Square, large-ε PGD and doubled PGD
    for images, _ in probes:
        assert len(images) == len(one)
        for mine, reference in zip(images, one, strict=True):
            np.testing.assert_array_equal(mine, reference)
    assert np.abs(one[0] - np.load(tmp_path / "images.npz")["x"]).max() > 0.05  # PGD moved the images
    # ... and carries on identically: the model's noise where one device leaves it after each attack (after the
    # checks' one chunk, the chief's), so the same accuracies, Min and checks.
    assert probes[0][1]["noise"] == probes[1][1]["noise"] == one_probe["noise"]
    assert probes[0][1]["results"] == probes[1][1]["results"] == one_probe["results"]
    assert len(one_probe["results"][0]["checks"]) == 5

    # Only the chief wrote, and what the one-device run writes.
    written = sorted(p.name for p in (tmp_path / "cluster").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "one").iterdir()) and "results.csv" in written
    assert (tmp_path / "cluster" / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()
    records = [json.loads((tmp_path / d / "net.json").read_text())["record"]["result"] for d in ("one", "cluster")]
    assert records[0] == records[1]
    assert "attacks run multi_worker over 2 workers × 2 devices" in outputs[0]
    assert "worker 1 of 2: done; the chief (worker 0) writes the results" in outputs[1]


if __name__ == "__main__":  # one worker: two logical CPU devices, as the tests' conftest sets up
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.exit(_probed(Path(sys.argv[1]), sys.argv[2:]))
