"""The attacks' lanes (`keras_pnil.attacks.common`): on a machine without a GPU each batch of an attack on a
deterministic model is cut into `LANES` slices attacked side by side through one traced graph, each slice's
draws from a seed of its own; what they give must not depend on whether the slices ran side by side."""

import subprocess
import sys
import threading
from concurrent.futures import Future

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_pnil as kp
from keras_pnil.attacks import common, lanes
from keras_pnil.attacks.common import Draws, graph_loop


def _linear(*layers, shape=(6, 6, 1), classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape), *layers, keras.layers.Flatten(), keras.layers.Dense(classes)])


def _images(count=6, shape=(6, 6, 1), seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (count, *shape)).astype(np.float32)


class _OneAfterTheOther:
    """An executor that runs each slice at once, in the calling thread."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future


GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.fixture
def lanes_on(monkeypatch):
    """The lanes on, as on a machine without a GPU (this project's test machine), on any machine."""
    monkeypatch.setattr(lanes, "count", lambda: lanes.LANES)


@pytest.mark.skipif(GPU, reason="a GPU takes each batch whole")
def test_the_lanes_are_on_without_a_gpu():
    assert lanes.LANES == 2 and lanes.count() == 2


@pytest.mark.parametrize("attack", ["apgd-l2", "square-l2", "pgd", "fab-t"])
def test_slices_side_by_side_give_exactly_what_one_after_the_other_gives(attack, monkeypatch, lanes_on):
    model, x = _linear(), _images(7)  # 7 images: slices of 3 and 4
    y = model.predict(x, verbose=0).argmax(1)
    run = {"apgd-l2": lambda: kp.apgd(model, x, y, 1.0, norm="l2", steps=20),
           "square-l2": lambda: kp.square(model, x, y, 1.0, norm="l2", queries=50),
           "pgd": lambda: kp.pgd(model, x, y, 0.1, steps=5, restarts=2),
           "fab-t": lambda: kp.fab_targeted(model, x, y, 0.1, steps=10, targets=2)}[attack]
    side_by_side = run()
    monkeypatch.setattr(common, "_POOL", [_OneAfterTheOther()])
    np.testing.assert_array_equal(run(), side_by_side)


def test_each_slice_draws_from_its_own_seed(lanes_on):
    # Six copies of one image: slices 0–2 and 3–5. Were both slices given the same seed, image k and image k + 3
    # would start (and end) at the same point.
    model = _linear()
    x = np.repeat(_images(1), 6, axis=0)
    y = model.predict(x, verbose=0).argmax(1)
    x_adv = kp.pgd(model, x, y, 0.1, steps=1)
    ends = {x_adv[k].tobytes() for k in range(6)}
    assert len(ends) == 6


def test_a_random_model_is_attacked_in_whole_batches(recorder, lanes_on):
    # Its noise layers draw from generators the slices would share: it takes each batch whole, one at a time.
    model = _linear(kp.PixelwiseNoiseInjection(name="pnil"), recorder)
    x = _images(6)
    y = np.zeros(6, np.int64)
    kp.pgd(model, x, y, 0.1, steps=2, eot_samples=1)
    recorder.seen.clear()
    kp.pgd(model, x, y, 0.1, steps=2, eot_samples=1)
    assert len(recorder.seen) >= 2 and 3 not in {len(batch) for batch in recorder.seen}


@pytest.mark.skipif(GPU, reason="a GPU takes each batch whole")
def test_a_random_models_draws_go_in_groups_side_by_side_the_same_every_time(recorder, lanes_on):
    # Whole batches, each EOT evaluation in two groups of draws (2 + 2 of 4, on 3 images: 6 inputs a group),
    # which the graph runs side by side; the noise generators advance in the graph's program order, so a copy
    # of the model, its generators where the first's started, gives the same images.
    def model():
        noise = kp.PixelwiseNoiseInjection(name="pnil", bias_initializer=keras.initializers.Constant(-2.0), seed=7)
        return _linear(noise, recorder, seed=3)

    x, y = _images(3), np.zeros(3, np.int64)
    first = kp.pgd(model(), x, y, 0.2, steps=3, eot_samples=4)
    assert 6 in {len(batch) for batch in recorder.seen} and 12 not in {len(batch) for batch in recorder.seen[-4:]}
    np.testing.assert_array_equal(kp.pgd(model(), x, y, 0.2, steps=3, eot_samples=4), first)


@pytest.mark.skipif(GPU, reason="a GPU takes each batch whole")
def test_a_deterministic_model_is_attacked_in_slices(recorder):
    model = _linear(recorder)
    x = _images(6)
    y = model.predict(x, verbose=0).argmax(1)
    recorder.seen.clear()
    kp.pgd(model, x, y, 0.1, steps=2)
    sizes = [len(batch) for batch in recorder.seen]
    assert sizes.count(3) >= 2 * 2  # each slice's 2 steps (the whole batch is seen only by the input checks)


def test_each_iteration_of_a_loop_draws_afresh():
    # A loop's body is traced once: its draws must fold the iteration in, or every query of Square would
    # draw the same window.
    @tf.function(autograph=False)
    def three_draws(seed):
        draws = Draws(seed)

        def step(k, values):
            return k + 1, tf.tensor_scatter_nd_update(values, [[k]], draws.at(k).uniform([1]))

        return graph_loop(step, 3, tf.zeros([3]))[0]

    values = three_draws(tf.constant([0, 5], tf.int64)).numpy()
    assert len(set(values.tolist())) == 3
    np.testing.assert_array_equal(values, three_draws(tf.constant([0, 5], tf.int64)).numpy())  # the seed decides


def test_a_seed_beyond_int64_is_taken_as_the_seed_of_its_draws():
    model, x = _linear(), _images(4)
    y = model.predict(x, verbose=0).argmax(1)
    huge = kp.pgd(model, x, y, 0.1, steps=2, seed=2 ** 64 + 5)
    np.testing.assert_array_equal(kp.pgd(model, x, y, 0.1, steps=2, seed=2 ** 64 + 5), huge)
    assert not np.array_equal(kp.pgd(model, x, y, 0.1, steps=2, seed=2 ** 64 + 6), huge)


@pytest.mark.skipif(GPU, reason="the setting is for the lanes of a machine without a GPU")
def test_the_command_gives_each_lane_its_share_of_the_cores():
    # Before TensorFlow's first operation the setting takes; after it, it changes nothing and raises nothing.
    code = ("import os, tensorflow as tf; from keras_pnil.attacks.lanes import threads_for_lanes; "
            "print(threads_for_lanes(), tf.config.threading.get_intra_op_parallelism_threads(), os.cpu_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    took, threads, cores = done.stdout.split()
    assert took == "True" and int(threads) == max(int(cores) // lanes.LANES, 1)
    tf.constant(1.0) + 1.0  # TensorFlow has started in this process
    before = tf.config.threading.get_intra_op_parallelism_threads()
    assert lanes.threads_for_lanes() is False
    assert tf.config.threading.get_intra_op_parallelism_threads() == before


class _Recording:
    """A stand-in for a traced attack graph: records, per call, the thread it ran in and the device it was given."""

    input_signature = (tf.TensorSpec((None, 2), tf.float32), common.SEED_SPEC)

    def __init__(self):
        self.seen = []

    def __call__(self, x, seed):
        self.seen.append((threading.current_thread().name, common._DEVICE.get()))
        return x


def test_the_device_an_attack_is_placed_on_reaches_its_lanes_threads(lanes_on):
    # The replicas put each device's attacks under `placed(device)`; the lanes run in pool threads, which do not
    # inherit TensorFlow's device scope, so each lane must be handed the device again.
    graph = _Recording()
    seeded = common.SeededGraph(graph, seed=3, slices=lanes.LANES)
    x = tf.zeros((4, 2))
    with common.placed("/CPU:0"):
        np.testing.assert_array_equal(seeded(x), x)
    assert len(graph.seen) == lanes.LANES
    assert all(name.startswith("keras-pnil-lane") and device == "/CPU:0" for name, device in graph.seen)
    graph.seen.clear()
    seeded(x)  # outside `placed`: wherever TensorFlow places it
    assert [device for _, device in graph.seen] == [None] * lanes.LANES
