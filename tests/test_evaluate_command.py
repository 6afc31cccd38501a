"""`keras-pnil-evaluate` as a new user tries it: numbers that cannot be stale, one writer, resume, any model."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_pnil import cli, files

SMALL = ["--budget", "quick", "--set", "pgd.steps=3", "--set", "checks.enabled=false", "--attacks", "pgd"]


def _model(seed=0, name="user"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5, strides=3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(10)], name=name)


def _npz(path, mnist, start=0, n=30):
    _, (xt, yt) = mnist
    np.savez(path, x=xt[start:start + n], y=yt[start:start + n])
    return path


def _evaluate(*argv, capsys=None):
    code = cli.evaluate_main([str(a) for a in argv])
    return code, (capsys.readouterr() if capsys else None)


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return {r["attack"]: r for r in csv.DictReader(f)}


def test_new_contents_under_the_same_file_name_are_evaluated_again(mnist, tmp_path, capsys):
    _model().save(tmp_path / "m.keras")
    data, out = _npz(tmp_path / "d.npz", mnist), tmp_path / "out"
    argv = [tmp_path / "m.keras", "--data", data, "--epsilon", "0.1", *SMALL, "--out", out]
    assert _evaluate(*argv)[0] == 0
    assert _evaluate(*argv, capsys=capsys)[1].out.count("read back") == 1  # the same inputs: reused, and said so
    _npz(data, mnist, start=5000)  # other images under the same name
    code, printed = _evaluate(*argv, capsys=capsys)
    assert code == 0 and "read back" not in printed.out and "attacking" in printed.out
    _model(seed=1).save(tmp_path / "m.keras")  # other weights under the same name
    code, printed = _evaluate(*argv, capsys=capsys)
    assert code == 0 and "read back" not in printed.out
    assert _evaluate(*argv[:-2], "--set", "pgd.steps=4", "--out", out, capsys=capsys)[1].out.count("read back") == 0


def test_a_second_command_on_the_same_out_exits_with_one_line(mnist, tmp_path, capsys):
    _model().save(tmp_path / "m.keras")
    out = tmp_path / "out"
    out.mkdir()
    with files.exclusive(out, "an evaluation"):
        code, printed = _evaluate(tmp_path / "m.keras", "--data", _npz(tmp_path / "d.npz", mnist), "--epsilon",
                                  "0.1", *SMALL, "--out", out, capsys=capsys)
    lines = printed.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "is in use: process" in lines[0] and "is writing an evaluation" in lines[0]
    assert not (out / "results.csv").exists() and not (out / "m.json").exists()
    again = _evaluate(tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--epsilon", "0.1", *SMALL, "--out", out)
    assert again[0] == 0
    assert not (out / ".lock").exists()


def test_a_reduced_autoattack_is_labelled_reduced_everywhere(mnist, tmp_path, capsys):
    _model().save(tmp_path / "m.keras")
    out = tmp_path / "out"
    code, printed = _evaluate(tmp_path / "m.keras", "--data", _npz(tmp_path / "d.npz", mnist, n=20), "--epsilon",
                              "0.1", "--attacks", "autoattack", "--set", "autoattack.apgd_steps=3", "--set",
                              "autoattack.fab_steps=3", "--set", "autoattack.queries=20", "--set",
                              "autoattack.targets=2",
                              "--eot-samples", "4", "--set", "checks.enabled=false", "--out", out, capsys=capsys)
    assert code == 0, printed.err
    for name in ("robustness.md", "robustness.csv", "robustness.tex", "results.csv"):
        text = (out / name).read_text()
        assert "REDUCED budget (not AutoAttack's budget" in text and "autoattack.apgd_steps 3" in text, name
        assert "paper protocol" not in text, name
    rows = _rows(out)
    # A deterministic model: one draw, whatever the preset's draws for random models, in the table and the CSV.
    assert {r["accuracy_draws"] for r in rows.values()} == {"1"} and rows["autoattack"]["eot_samples"] == "1"
    assert "deterministic model: no EOT, one draw" in (out / "robustness.md").read_text()
    assert float(rows["min"]["accuracy"]) <= float(rows["min"]["clean_accuracy"])


def test_ctrl_c_is_one_line_and_the_same_command_resumes_at_the_next_attack(trained_pair, mnist, tmp_path):
    trained_pair[True].save(tmp_path / "m.keras")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from keras_pnil.cli import evaluate_main; sys.exit(evaluate_main())",
           str(tmp_path / "m.keras"), "--data", str(_npz(tmp_path / "d.npz", mnist, n=300)), "--epsilon", "0.1",
           "--budget", "quick", "--attacks", "pgd,square", "--set", "pgd.steps=10", "--set", "square.queries=400",
           "--set", "checks.enabled=false", "--out", str(out)]
    # A terminal's Ctrl-C: SIGINT at its default (a test run started in the background inherits it ignored).
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finished = out / "m.stages" / "pgd.json"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not finished.exists():
        time.sleep(0.1)
    assert first.poll() is None, "the evaluation ended before it could be interrupted"
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "interrupted; run the same command again to resume"
    assert "Traceback" not in stderr and not (out / "m.json").exists() and not (out / ".lock").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[clean] finished earlier" in again.stdout and "[pgd] finished earlier" in again.stdout
    assert "[pgd] attacking" not in again.stdout and "[square] attacking" in again.stdout
    assert (out / "m.json").exists() and not (out / "m.stages").exists()


def test_an_unwritable_out_fails_before_any_attack(mnist, tmp_path, capsys):
    _model().save(tmp_path / "m.keras")
    (tmp_path / "file").write_text("a file, not a folder")
    code, printed = _evaluate(tmp_path / "m.keras", "--data", _npz(tmp_path / "d.npz", mnist), "--epsilon", "0.1",
                              *SMALL, "--out", tmp_path / "file" / "out", capsys=capsys)
    assert code == 1 and printed.err.strip().splitlines() == [
        f"error: cannot write to {tmp_path / 'file' / 'out'}: Not a directory"]
    assert "attacking" not in printed.out and "estimate" not in printed.out


def test_show_plan_prints_every_number_and_a_plan_file_runs_it(mnist, tmp_path, capsys):
    _model().save(tmp_path / "m.keras")
    data = _npz(tmp_path / "d.npz", mnist, n=40)
    code, printed = _evaluate(tmp_path / "m.keras", "--data", data, "--epsilon", "0.1", *SMALL, "--set",
                              "pgd.restarts=2", "--show-plan", "--out", tmp_path / "out", capsys=capsys)
    shown = json.loads(printed.out)
    assert code == 0 and not (tmp_path / "out").exists()
    plan = shown["targets"]["m"]
    assert plan["random"] is False and plan["num_images"] == 40 and plan["attacks"][0]["settings"]["restarts"] == 2
    (tmp_path / "plan.json").write_text(json.dumps(shown["request"]))
    code, printed = _evaluate(tmp_path / "m.keras", "--data", data, "--epsilon", "0.1", "--plan",
                              tmp_path / "plan.json", "--out", tmp_path / "out", capsys=capsys)
    assert code == 0 and "PGD 3 steps × 2 restarts" in printed.out
    bad = subprocess.run([sys.executable, "-c", "import sys; from keras_pnil.cli import evaluate_main; "
                          "sys.exit(evaluate_main())", "m.keras", "--set", "pgd.stepz=3", "--out", "o"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "argument --set: attack 'pgd' has no setting 'stepz'; it has ['eot_samples', 'images', 'restarts', 'seed', "
        "'step_size', 'steps']")


def test_an_estimate_over_an_hour_says_so_first_and_names_the_flags(trained_pair, mnist, tmp_path, capsys):
    trained_pair[True].save(tmp_path / "m.keras")  # random: the paper's SPSA runs with EOT 100
    code, printed = _evaluate(tmp_path / "m.keras", "--data", _npz(tmp_path / "d.npz", mnist, n=1000), "--epsilon",
                              "0.1", "--budget", "paper", "--estimate-only", "--out", tmp_path / "out", capsys=capsys)
    first = printed.out.splitlines()[0]
    assert code == 0 and first.startswith("WARNING: this evaluation is estimated at about")
    assert all(flag in first for flag in ("--num-images", "--budget quick", "--attacks", "--set"))
    code, printed = _evaluate(tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--epsilon", "0.1", *SMALL,
                              "--estimate-only", "--out", tmp_path / "out", capsys=capsys)
    assert code == 0 and "WARNING" not in printed.out


def test_dataset_for_a_model_file_reads_only_the_test_split(data_dir, tmp_path, capsys):
    test_only = tmp_path / "data" / "mnist"
    test_only.mkdir(parents=True)
    for name in os.listdir(data_dir / "mnist"):
        if name.startswith("t10k"):
            shutil.copy(data_dir / "mnist" / name, test_only / name)
    _model().save(tmp_path / "m.keras")
    code, printed = _evaluate(tmp_path / "m.keras", "--dataset", "mnist", "--data-dir", tmp_path / "data",
                              "--num-images", "20", "--epsilon", "0.1", *SMALL, "--out", tmp_path / "out",
                              capsys=capsys)
    assert code == 0, printed.err
    assert _rows(tmp_path / "out")["clean"]["n_images"] == "20"


SUBCLASSED = '''
import keras

@keras.saving.register_keras_serializable(package="user_models")
class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flat, self.dense = keras.layers.Flatten(), keras.layers.Dense(10)

    def call(self, x):
        return self.dense(self.flat(x))
'''


def test_any_model_a_subclassed_an_h5_and_a_two_output_model(mnist, tmp_path, capsys):
    (tmp_path / "user.py").write_text(SUBCLASSED)
    data = _npz(tmp_path / "d.npz", mnist, n=20)
    cli.targets.import_custom_objects([tmp_path / "user.py"])
    net = keras.saving.get_registered_object("user_models>Net")()
    net(np.zeros((1, 28, 28, 1), "float32"))
    net.save(tmp_path / "sub.keras")
    _model().save(tmp_path / "legacy.h5")
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Flatten()(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(10, name="logits")(hidden),
                               keras.layers.Dense(3, name="aux")(hidden)])
    two.save(tmp_path / "two.keras")
    base = ["--data", data, "--epsilon", "0.1", *SMALL, "--custom-objects", tmp_path / "user.py"]
    code, printed = _evaluate(tmp_path / "two.keras", *base, "--out", tmp_path / "o1", capsys=capsys)
    lines = printed.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "has 2 outputs ('logits', 'aux')" in lines[0]
    assert "choose its logits output with --output NAME" in lines[0]
    code, printed = _evaluate(tmp_path / "sub.keras", tmp_path / "legacy.h5", tmp_path / "two.keras", *base,
                              "--output", "logits", "--out", tmp_path / "o2", capsys=capsys)
    assert code == 0, printed.err
    table = (tmp_path / "o2" / "robustness.md").read_text()
    assert "| sub | d.npz |" in table and "| legacy | d.npz |" in table and "| two | d.npz |" in table


def test_the_library_is_as_strict_as_the_command(trained_pair, mnist):
    import keras_pnil as kp

    _, (xt, yt) = mnist
    model, x, y = trained_pair[False], xt[:4].copy(), yt[:4]
    x[1, 3, 3, 0] = np.nan
    cases = [((model, x, y, 0.1), "must be finite; found 1 NaN"),
             ((model, xt[:0], yt[:0], 0.1), "must not be empty"),
             ((model, xt[:4], np.eye(10)[yt[:4]], 0.1), "labels look one-hot"),
             ((model, xt[:4, :20], yt[:4], 0.1), "cannot take images shaped"),
             ((model, xt[:4], yt[:4] + 10, 0.1), "labels must lie in \\[0, 10\\)")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            kp.robustness(*args, attacks="pgd", progress=lambda m: None)
        with pytest.raises(ValueError, match=message):
            kp.accuracy(*args[:3])
    with pytest.raises(ValueError, match="Unknown attack 'pgdx'"):
        kp.robustness(model, xt[:4], yt[:4], 0.1, attacks="pgdx")
