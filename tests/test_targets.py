"""`keras-pnil-evaluate` on a user's own Keras model: model files, own data, own random layers, softmax outputs."""

import csv
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_pnil as kp
from keras_pnil import cli, targets

# A small budget: PGD-10 on every image; the masking checks on a subset of 40, Square with 20 queries.
FAST = ["--budget", "quick", "--set", "pgd.steps=10", "--set", "checks.images=40", "--set", "square.queries=20"]

# A user's own noise layer, random at inference: the library has never heard of it.
NOISE_LAYER = '''
import keras

@keras.saving.register_keras_serializable(package="user_noise")
class InputNoise(keras.layers.Layer):
    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev, self.seed = stddev, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, x):
        return x + self.stddev * keras.random.normal(keras.ops.shape(x), seed=self.generator)

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}
'''


def _sequential(first_layers, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 1)), *first_layers,
                             keras.layers.Conv2D(8, 5, strides=2, activation="relu"),
                             keras.layers.Conv2D(16, 5, strides=2, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])


def _fit(model, mnist, epochs=2):
    (x, y), _ = mnist
    trainer = kp.adversarial(model, "nfgsm", 0.1)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x[:3000], y[:3000], batch_size=100, epochs=epochs, verbose=0)
    return model


def _npz(path, mnist, n):
    _, (xt, yt) = mnist
    np.savez(path, x=xt[:n], y=yt[:n])
    return path


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_users_sequential_pnil_model_goes_from_model_save_to_a_tidy_csv(mnist, tmp_path, capsys):
    model = _fit(_sequential([kp.PixelwiseNoiseInjection(seed=0)]), mnist)
    model.save(tmp_path / "mine.keras")
    data = _npz(tmp_path / "mine.npz", mnist, 60)
    code = cli.evaluate_main([str(tmp_path / "mine.keras"), "--data", str(data), "--epsilon", "0.1",
                              "--attacks", "pgd,pgd-no-eot", *FAST, "--out", str(tmp_path / "eval")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "estimate: " in printed and "random at inference" in printed and "PGD 10 steps" in printed
    with open(tmp_path / "eval" / "results.csv", newline="") as f:
        assert f.readline().strip() == ("model,dataset,epsilon,attack,accuracy,clean_accuracy,n_images,eot_samples,"
                                        "accuracy_draws,budget,label,norm,bounds,largest_perturbation")
    rows = _rows(tmp_path / "eval")
    assert [r["attack"] for r in rows] == ["clean", "pgd", "pgd-no-eot", "min"]
    by = {r["attack"]: r for r in rows}
    assert {r["model"] for r in rows} == {str(tmp_path / "mine.keras")} and {r["dataset"] for r in rows} == {"mine.npz"}
    assert all(0 <= float(r["accuracy"]) <= 1 and float(r["epsilon"]) == 0.1 for r in rows)
    assert by["pgd"]["eot_samples"] == "4" and by["pgd-no-eot"]["eot_samples"] == "1"  # the quick budget's EOT
    assert by["pgd"]["n_images"] == "60" and by["pgd"]["budget"] == "PGD 10 steps"
    assert float(by["min"]["accuracy"]) == min(float(by[a]["accuracy"]) for a in ("pgd", "pgd-no-eot"))
    assert all(float(r["accuracy"]) <= float(r["clean_accuracy"]) for r in rows)  # never above clean, per row
    assert {r["accuracy_draws"] for r in rows} == {"5"} and "REDUCED budget" in by["min"]["label"]
    details = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert details["rows"][0]["attack"] == "clean" and len(details["models"]) == 1
    assert len(details["models"][0]["worst_case_per_image"]) == 60 and details["models"][0]["checks"]
    assert len(details["models"][0]["plan"]["checks"]["images"]) == 40
    # A model file gets one row per model: no folds, t-test or paper row.
    table = (tmp_path / "eval" / "robustness.md").read_text()
    assert "| mine | mine.npz |" in table and "| paper |" not in table and "±" not in table and "t-test" not in table
    assert "PGD (60 img, EOT 4)" in table and not (tmp_path / "eval" / "table1.md").exists()


def test_a_custom_random_layer_is_found_by_behaviour_and_attacked_with_eot(mnist, tmp_path):
    (tmp_path / "user_layers.py").write_text(NOISE_LAYER)
    targets.import_custom_objects([tmp_path / "user_layers.py"])
    noise = keras.saving.get_registered_object("user_noise>InputNoise")
    model = _fit(_sequential([noise(0.8, seed=1)]), mnist)
    assert kp.probe(model).random and not kp.probe(model).probabilities
    model.save(tmp_path / "noisy.keras")
    argv = [sys.executable, "-c", "import sys; from keras_pnil.cli import evaluate_main; sys.exit(evaluate_main())",
            str(tmp_path / "noisy.keras"), "--data", str(_npz(tmp_path / "d.npz", mnist, 400)), "--epsilon", "0.2",
            "--attacks", "pgd,pgd-no-eot", *FAST, "--set", "pgd.steps=2", "--eot-samples", "16",
            "--out", str(tmp_path / "eval")]
    without = subprocess.run(argv, capture_output=True, text=True, timeout=300)  # a fresh process: not registered
    assert without.returncode == 1 and "--custom-objects" in without.stderr
    done = subprocess.run(argv + ["--custom-objects", str(tmp_path / "user_layers.py")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "random at inference" in done.stdout and "pointless" not in done.stdout + done.stderr
    by = {r["attack"]: r for r in _rows(tmp_path / "eval")}
    assert by["pgd"]["eot_samples"] == "16"
    # 400 images, PGD-2 (few steps: each step's gradient matters): one draw per step left 2.5-5 points more
    # accuracy than EOT over 16 draws in trial runs with four seeds; the accuracies' noise is about 1 point.
    assert float(by["pgd"]["accuracy"]) < float(by["pgd-no-eot"]["accuracy"]) - 0.015


def test_a_softmax_model_is_attacked_through_its_logarithm(trained_pair, mnist, tmp_path, capsys):
    _, (xt, yt) = mnist
    logits = trained_pair[False]
    inputs = keras.Input((28, 28, 1))
    softmax = keras.Model(inputs, keras.layers.Softmax()(logits(inputs)))
    behaviour = kp.probe(softmax)
    assert behaviour.probabilities and not behaviour.random and not kp.probe(logits).probabilities
    x, y = xt[:200], yt[:200]
    with pytest.warns(UserWarning, match="outputs probabilities"):
        on_softmax = kp.accuracy(softmax, kp.pgd(softmax, x, y, 0.1, steps=10), y)
    assert abs(on_softmax - kp.accuracy(logits, kp.pgd(logits, x, y, 0.1, steps=10), y)) <= 0.02
    softmax.save(tmp_path / "softmax.keras")
    code = cli.evaluate_main([str(tmp_path / "softmax.keras"), "--data", str(_npz(tmp_path / "d.npz", mnist, 30)),
                              "--epsilon", "0.1", "--attacks", "pgd", *FAST, "--out", str(tmp_path / "eval")])
    assert code == 0 and capsys.readouterr().out.count("outputs probabilities") == 1


def test_estimate_only_prints_the_estimate_and_evaluates_nothing(trained_pair, mnist, tmp_path, capsys):
    trained_pair[False].save(tmp_path / "m.keras")
    (tmp_path / "folder").mkdir()  # a folder holding only a model.keras counts as that model file
    trained_pair[False].save(tmp_path / "folder" / "model.keras")
    code = cli.evaluate_main([str(tmp_path / "m.keras"), str(tmp_path / "folder"), "--data",
                              str(_npz(tmp_path / "d.npz", mnist, 30)), "--epsilon", "0.1", "--estimate-only",
                              "--out", str(tmp_path / "eval")])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("img/s measured now") == 2 and "folder: 30 images" in printed
    assert not (tmp_path / "eval" / "results.csv").exists()
