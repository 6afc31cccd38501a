"""Evaluation across devices: `--strategy mirrored` spreads every attack over the replicas (two logical CPU
devices here, set up by conftest before TensorFlow starts) with exactly the one-device results."""

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil import cli as cli_module
from keras_pnil import replicas
from keras_pnil.cli import evaluate_main
from keras_pnil.plan import PlanRequest

IMAGES = 40
SMALL = {"pgd.steps": 5, "apgd-ce.steps": 5, "square.queries": 30, "square.images": IMAGES, "num_images": IMAGES,
         "eot_samples": 2, "checks.enabled": False}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 16 images, so that 40 images make three (the last one short) over the two replicas."""
    monkeypatch.setattr(replicas, "CHUNK", 16)


@pytest.fixture(scope="module")
def two_devices():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) == 2, "conftest sets up two logical CPU devices before TensorFlow starts"
    return devices


def _model(pnil: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = kp.PixelwiseNoiseInjection(seed=1, bias_initializer=keras.initializers.Constant(-3.0))(inputs) if pnil \
        else inputs
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(10)(hidden), name="pnil_net" if pnil else "net")


def _images():
    rng = np.random.default_rng(0)
    return rng.uniform(size=(IMAGES, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, IMAGES)


def _noise(model) -> list:
    return [g.state.numpy().copy() for g in replicas._noise_generators(model)]


def _restore(model, states) -> None:
    for generator, state in zip(replicas._noise_generators(model), states, strict=True):
        generator.state.assign(state)


@pytest.mark.parametrize("pnil", [False, True], ids=["deterministic", "pnil"])
def test_mirrored_gives_exactly_the_one_device_images(two_devices, pnil):
    model, (x, y) = _model(pnil), _images()
    plan = PlanRequest.from_preset("quick", ["pgd", "apgd-ce", "square"]).with_values(SMALL).resolve(
        epsilon=0.1, random=pnil, num_images=IMAGES)
    mirrored = replicas.replicas("mirrored")
    assert mirrored.count == 2
    for attack in plan.attacks:
        start = _noise(model)
        one = replicas.Replicas().run(attack, model, x, y, plan.threat)
        after_one = _noise(model)
        _restore(model, start)
        two = mirrored.run(attack, model, x, y, plan.threat)
        np.testing.assert_array_equal(two, one, err_msg=attack.name)
        assert np.abs(one - x).max() > 0.05, attack.name  # the attack moved the images
        # The model's noise stands where one device leaves it, so the accuracy draws after an attack agree too.
        assert all(np.array_equal(a, b) for a, b in zip(_noise(model), after_one, strict=True))
    copy = next(iter(getattr(model, replicas._COPIES).values()))
    assert copy.weights[0].value.device.endswith("CPU:1")  # the second replica's copy lives on the second device


def test_a_naive_split_is_not_the_one_device_result(two_devices):
    # Why the chunks carry their own seeds: splitting the images in two halves, each attacked with the plan's
    # seed (as if each replica ran the attack on its share), changes the second half's random starts.
    model, (x, y) = _model(False), _images()
    plan = PlanRequest.from_preset("quick", ["pgd"]).with_values(SMALL).resolve(epsilon=0.1, random=False,
                                                                                num_images=IMAGES)
    attack = plan.attacks[0]
    one = replicas.replicas("mirrored").run(attack, model, x, y, plan.threat)
    first = dataclasses.replace(attack, images=tuple(range(16)))
    second = dataclasses.replace(attack, images=tuple(range(16, IMAGES)))
    naive = np.concatenate([first.run(model, x, y, plan.threat), second.run(model, x, y, plan.threat)])
    np.testing.assert_array_equal(naive[:16], one[:16])  # chunk 0 keeps the plan's seed
    assert not np.array_equal(naive[16:], one[16:])


def test_robustness_mirrored_equals_default_and_says_so(two_devices):
    (x, y), lines = _images(), []
    # A fresh model each (a random model's noise moves on with every call; its seed starts it again).
    results = [kp.robustness(_model(True), x, y, 0.1, "pgd,apgd-ce,square", budget="quick", strategy=strategy,
                             progress=lines.append, **SMALL)
               for strategy in ("default", "mirrored")]
    one, two = (r.to_dict() for r in results)
    assert one["worst_case_per_image"] == two["worst_case_per_image"]
    assert one["attacks"] == two["attacks"] and one["clean"] == two["clean"]
    assert one["clean"] > one["worst_case"]  # the attacks broke some images: the comparison has content
    assert "[devices] attacks run mirrored over 2 devices (/device:CPU:0, /device:CPU:1)" in lines


def test_evaluate_command_mirrored_matches_default(two_devices, tmp_path, capsys):
    # A PNIL model file: its noise starts from the saved state in each run (the estimate's timed passes keep it).
    model, (x, y) = _model(True), _images()
    model.save(tmp_path / "net.keras")
    np.savez(tmp_path / "images.npz", x=x, y=y)
    found = {}
    for strategy in ("default", "mirrored"):
        out = tmp_path / strategy
        assert evaluate_main([str(tmp_path / "net.keras"), "--data", str(tmp_path / "images.npz"), "--epsilon",
                              "0.1", "--attacks", "pgd,square", "--budget", "quick", "--strategy", strategy,
                              *[f"--set={k}={v}" for k, v in SMALL.items()], "--out", str(out)]) == 0
        found[strategy] = json.loads((out / "net.json").read_text())["record"]["result"]
    assert found["mirrored"]["worst_case_per_image"] == found["default"]["worst_case_per_image"]
    assert found["mirrored"]["attacks"] == found["default"]["attacks"]
    assert "attacks run mirrored over 2 devices" in capsys.readouterr().out


def test_one_device_mirrored_runs_as_the_default_with_a_note():
    model, (x, y) = _model(False), _images()
    lines = []
    plan = PlanRequest.from_preset("quick", ["pgd"]).with_values(SMALL).resolve(epsilon=0.1, random=False,
                                                                                num_images=IMAGES)
    one = kp.evaluation.evaluate(model, x, y, plan, progress=lines.append,
                                 replicas=replicas.Replicas("mirrored", ("/device:CPU:0",)))
    default = kp.evaluation.evaluate(model, x, y, plan)
    assert one.worst_case_per_image == default.worst_case_per_image
    assert "[devices] attacks run mirrored over 1 device (/device:CPU:0) (one device: as the default strategy)" \
        in lines


def test_multi_worker_takes_a_one_machine_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:12345"]},
                                                "task": {"type": "worker", "index": 0}}))
    chosen = replicas.replicas("multi_worker")  # one machine: its devices, as mirrored (no cluster to start)
    assert chosen.strategy == "multi_worker" and chosen.devices == replicas.local_devices()
    assert (chosen.worker, chosen.workers, chosen.is_chief) == (0, 1, True)


CHIEF_AND_TWO = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}


@pytest.mark.parametrize("cluster, task, place", [
    ({"worker": ["a:1", "b:1", "c:1"]}, {"type": "worker", "index": 2}, (2, 3, "/job:worker/replica:0/task:2")),
    # A chief comes first; the workers follow it.
    (CHIEF_AND_TWO, {"type": "chief", "index": 0}, (0, 3, "/job:chief/replica:0/task:0")),
    (CHIEF_AND_TWO, {"type": "worker", "index": 0}, (1, 3, "/job:worker/replica:0/task:0")),
])
def test_a_cluster_places_each_task_among_its_workers(cluster, task, place):
    worker = replicas.cluster_worker(json.dumps({"cluster": cluster, "task": task}))
    assert (worker.index, worker.count, worker.task) == place


@pytest.mark.parametrize("argv, environment, message", [
    (["--strategy", "ring"], None, "argument --strategy: invalid choice: 'ring'"),
    (["--strategy", "multi_worker"], None, "error: strategy multi_worker needs the TF_CONFIG environment variable"),
    (["--strategy", "multi_worker"], "not json", "error: TF_CONFIG is not a JSON object with a cluster"),
    (["--strategy", "multi_worker"], '{"cluster": {"worker": "a:1"}}', "error: TF_CONFIG is not a JSON object with"),
    (["--strategy", "multi_worker"], json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "ps"}}),
     """error: TF_CONFIG's task {"type": "ps"} is not a chief or worker of its cluster (it has: worker 0, worker 1)"""),
    (["--strategy", "multi_worker"], json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                 "task": {"type": "worker", "index": 2}}),
     "is not a chief or worker of its cluster (it has: worker 0, worker 1); set its task to this machine's place"),
])
def test_bad_strategies_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys, argv, environment,
                                                            message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if environment is not None:
        monkeypatch.setenv("TF_CONFIG", environment)
    # The target does not exist: the strategy is refused before anything is read.
    try:
        status = evaluate_main([str(tmp_path / "missing.keras"), "--epsilon", "0.1", *argv, "--out", str(tmp_path)])
    except SystemExit as exit:  # argparse
        status = exit.code
    err = capsys.readouterr().err.strip()
    assert status in (1, 2) and message in err and len(err.splitlines()) == 1, err
    with pytest.raises(ValueError, match="unknown strategy 'ring'; expected one of default, mirrored"):
        kp.robustness(_model(False), *_images(), 0.1, "pgd", strategy="ring")


def test_an_error_on_one_replica_reaches_the_caller(two_devices, monkeypatch):
    model, (x, y) = _model(False), _images()
    plan = PlanRequest.from_preset("quick", ["pgd"]).with_values(SMALL).resolve(epsilon=0.1, random=False,
                                                                                num_images=IMAGES)
    ran = []

    def run(attack, model, x, y, threat):
        ran.append(attack.images[0])
        if attack.images[0] == 16:  # chunk 1: the second replica's
            raise ValueError("chunk 1 failed")
        return x[np.asarray(attack.images)]

    monkeypatch.setattr(type(plan.attacks[0]), "run", run)
    with pytest.raises(ValueError, match="chunk 1 failed"):
        replicas.replicas("mirrored").run(plan.attacks[0], model, x, y, plan.threat)
    assert 16 in ran


class _Cluster:
    """The workers' all-reduce for threads standing in for the machines: each adds its value, all get the sum."""

    def __init__(self, count: int):
        self.slots, self.barrier = [None] * count, threading.Barrier(count, timeout=30)

    def all_sum(self, spread, value):
        self.slots[spread.worker] = value
        self.barrier.wait()
        total = sum(self.slots)
        self.barrier.wait()  # every worker has its sum before the next round writes
        return total

    def run(self, work) -> list:
        """`work(spread)` on each worker, in a thread of its own."""
        spreads = [replicas.Replicas("multi_worker", (), w, len(self.slots)) for w in range(len(self.slots))]
        with ThreadPoolExecutor(len(spreads)) as pool:
            return [f.result() for f in [pool.submit(work, spread) for spread in spreads]]


def test_every_worker_skips_the_stages_and_jobs_the_chief_finished(monkeypatch, tmp_path):
    cluster = _Cluster(2)
    monkeypatch.setattr(replicas.Replicas, "_all_sum", lambda spread, value: cluster.all_sum(spread, value))
    chief_store = {"clean": np.array([1.0, np.nan, 0.5])}

    class Store(dict):
        def load(self, name):
            return self.get(name)

        def save(self, name, values):
            self[name] = values

    def stages(spread):
        store = spread.shared(Store(chief_store) if spread.is_chief else Store())
        loaded = [store.load("clean"), store.load("pgd")]
        store.save("pgd", np.zeros(3))
        return loaded, store.store

    (chief, chief_saved), (other, other_saved) = cluster.run(stages)
    np.testing.assert_array_equal(other[0], [1.0, np.nan, 0.5])  # the chief's stage, NaN where it did not attack
    assert chief[1] is None and other[1] is None  # neither has PGD: both attack it
    assert "pgd" in chief_saved and other_saved is None  # only the chief keeps stages

    # The evaluate command's jobs: the chief has the first one's record; the other worker evaluates only the second.
    jobs = [SimpleNamespace(name=n, key=n * 3, record_path=lambda out, n=n: out / f"{n}.json", model=n, x=None, y=None,
                            plan=None) for n in ("a", "b")]
    kp.records.write_record(tmp_path / "a.json", "aaa", {"record": {}})
    ran = []
    monkeypatch.setattr(cli_module.jobs, "run", lambda job, out, progress, spread: ran.append(("run", job.name)))
    monkeypatch.setattr(cli_module, "evaluate", lambda model, *a, **k: ran.append(("evaluate", model)))
    cluster.run(lambda spread: cli_module._run_jobs(jobs, tmp_path, spread))
    assert sorted(ran) == [("evaluate", "b"), ("run", "a"), ("run", "b")]


def _autoattack_plan():
    values = {"autoattack.apgd_steps": 3, "autoattack.fab_steps": 3, "autoattack.targets": 2,
              "autoattack.queries": 30, "autoattack.images": IMAGES, "num_images": IMAGES, "checks.enabled": False}
    return PlanRequest.from_preset("autoattack", ["autoattack"]).with_values(values).resolve(
        epsilon=0.1, random=False, num_images=IMAGES)


def test_autoattacks_stages_come_back_from_every_replica_as_from_one_device(two_devices):
    # The masking checks read which stage broke each image (AutoAttack's Square stage as the witness): the
    # stage codes are gathered with the images, chunk by chunk, the same for one device and two.
    model, (x, y), plan = _model(False), _images(), _autoattack_plan()
    attack = plan.attacks[0]
    one_images, one_codes = replicas.Replicas().run(attack, model, x, y, plan.threat, staged=True)
    two_images, two_codes = replicas.replicas("mirrored").run(attack, model, x, y, plan.threat, staged=True)
    np.testing.assert_array_equal(two_images, one_images)
    np.testing.assert_array_equal(two_codes, one_codes)
    np.testing.assert_array_equal(one_images, replicas.Replicas().run(attack, model, x, y, plan.threat))
    assert len(one_codes) == IMAGES and set(np.unique(one_codes)) <= {-2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    assert (one_codes >= 0).any()  # some stage broke some image


def test_autoattacks_stages_are_exchanged_between_workers(monkeypatch):
    # Two workers simulated in turn: the all-reduce returns the first worker's contribution plus the second's.
    model, (x, y), plan = _model(False), _images(), _autoattack_plan()
    attack = plan.attacks[0]
    sent: list = []

    def first_worker_sends(self, value):
        sent.append(value)
        whole = value.copy()
        whole[:, -1] = 1  # as if the other worker's chunks had come: the first pass only records what it sends
        return whole

    monkeypatch.setattr(replicas.Replicas, "_all_sum", first_worker_sends)
    replicas.Replicas("multi_worker", (), 0, 2).run(attack, model, x, y, plan.threat, staged=True)
    first = list(sent)
    monkeypatch.setattr(replicas.Replicas, "_all_sum", lambda self, value: value + first.pop(0))
    images, codes = replicas.Replicas("multi_worker", (), 1, 2).run(attack, model, x, y, plan.threat, staged=True)
    one_images, one_codes = replicas.Replicas().run(attack, model, x, y, plan.threat, staged=True)
    np.testing.assert_array_equal(images, one_images)
    np.testing.assert_array_equal(codes, one_codes)
