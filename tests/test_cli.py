import json
import os
import signal
import subprocess
import sys
import time

from keras_pnil import cli


def _command(main: str, *argv) -> list[str]:
    return [sys.executable, "-c", f"import sys; from keras_pnil.cli import {main}; sys.exit({main}())", *map(str, argv)]


def _train_cli(out, data_dir, *extra):
    cmd = [sys.executable, "-m", "keras_pnil.cli", "--data-dir", str(data_dir), "--dataset", "mnist",
           "--method", "nfgsm", "--pnil",
           "--train-size", "1000", "--validation-size", "200", "--monitor-images", "50", "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "1"})


def test_killed_training_resumes_from_its_last_epoch(tmp_path, data_dir):
    out = tmp_path / "run"
    proc = _train_cli(out, data_dir, "--epochs", "3")
    history = out / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().strip().splitlines()) >= 2:  # one epoch done
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training finished before it could be interrupted:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(history.read_text().strip().splitlines()) - 1
    assert not (out / "model.keras").exists() and (out / "backup").exists()
    resumed = _train_cli(out, data_dir, "--epochs", "3")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    epochs = [int(line.split(",")[0]) for line in history.read_text().strip().splitlines()[1:]]
    assert epochs == [0, 1, 2] and done_before >= 1
    assert f"{3 - done_before} epochs this session" in output  # it did not start over
    for name in ("model.keras", "config.json", "best/best.weights.h5", "logs"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["pnil"] is True
    again = _train_cli(out, data_dir, "--epochs", "3")
    assert "holds a finished run" in again.communicate(timeout=120)[0]


def test_train_command_names_a_bad_option_in_one_line(tmp_path):
    done = subprocess.run(_command("train_main", "--fold", "12", "--out", tmp_path / "run"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr  # argparse's status for a bad flag
    # TensorFlow's own start-up lines may precede it; ours is one line, the last.
    assert done.stderr.strip().splitlines()[-1] == (
        "keras-pnil-train: error: argument --fold: must be one of 0-9 (the 5×2 protocol); got 12")
    assert not (tmp_path / "run").exists()  # rejected before any work
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"epochs": 3, "learning_rate": 0.1}')
    assert cli.train_main(["--config", str(bad_config), "--out", str(tmp_path / "run")]) == 1


def test_evaluate_command_prints_the_table_and_rejects_bad_runs(trained_pair, tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    trained_pair[True].save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "mnist", "method": "nfgsm", "pnil": True,
                                                 "epsilon": 8 / 255, "epochs": 2, "validation_indices": []}))
    cmd = _command("evaluate_main", run, "--data-dir", data_dir, "--budget", "quick", "--num-images", "40",
                   "--set", "spsa.images=10", "--set", "square.images=10", "--set", "pgd.steps=5",
                   "--set", "spsa.steps=2", "--set", "spsa.samples=16", "--eot-samples", "2", "--out",
                   tmp_path / "eval", "--attacks", "pgd,spsa,apgd-dlr,square", "--set", "apgd-dlr.steps=3",
                   "--set", "square.queries=30")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| MNIST | + PNIL | ours |" in done.stdout and "REDUCED budget" in done.stdout
    assert "NFGSM APGD-DLR | NFGSM SQUARE | NFGSM Min |" in done.stdout
    assert (tmp_path / "eval" / "table1.md").exists() and (tmp_path / "eval" / "run_pnil.png").exists()
    result = json.loads((tmp_path / "eval" / "run.json").read_text())["record"]["result"]
    attacks = {a["name"]: a for a in result["plan"]["attacks"]}
    assert attacks["pgd"]["settings"]["steps"] == 5 and attacks["pgd"]["eot_samples"] == 2
    assert attacks["apgd-dlr"]["settings"]["steps"] == 3 and attacks["spsa"]["settings"]["samples"] == 16
    assert set(result["attacks"]) == {"pgd", "spsa", "apgd-dlr", "square"}
    assert len(result["plan"]["common_images"]) == 10 and result["effective"] <= result["effective_clean"]
    bad = subprocess.run(cmd[:3] + [str(tmp_path), "--out", str(tmp_path / "e2")], capture_output=True, text=True)
    assert bad.returncode == 1 and "not a finished training run" in bad.stderr and "Traceback" not in bad.stderr
    unknown = subprocess.run(cmd + ["--attacks", "pgd,cw"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "Unknown attack 'cw'" in unknown.stderr


def test_reproduce_command_names_a_missing_budget(capsys, tmp_path):
    assert cli.reproduce_main(["--suite", "table1", "--budget", "huge"]) == 1
    assert "has no budget 'huge'" in capsys.readouterr().err
    assert cli.reproduce_main(["--suite", str(tmp_path / "none.json")]) == 1
    assert "cannot read suite" in capsys.readouterr().err


def test_reproduce_command_estimates_the_cost_before_starting(capsys):
    assert cli.reproduce_main(["--budget", "paper", "--datasets", "mnist", "--estimate-only"]) == 0
    assert "estimate: mnist: 40 runs, about" in capsys.readouterr().out


def _save_run(model, run):
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "mnist", "method": "nfgsm", "pnil": False,
                                                 "epsilon": 8 / 255, "epochs": 2, "validation_indices": []}))


def test_a_killed_evaluation_reuses_the_targets_it_finished(trained_pair, tmp_path, data_dir):
    for name in ("a", "b"):
        _save_run(trained_pair[False], tmp_path / name)
    cmd = _command("evaluate_main", tmp_path / "a", tmp_path / "b", "--data-dir", data_dir, "--budget", "quick",
                   "--num-images", "300", "--set", "square.images=100", "--set", "pgd.steps=20", "--attacks",
                   "pgd,square", "--set", "square.queries=300", "--out", tmp_path / "eval")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = tmp_path / "eval" / "a.json"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not finished.exists():
        time.sleep(0.2)
    assert first.poll() is None, "the evaluation ended before it could be interrupted:\n" + first.stdout.read()
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "eval" / "b.json").exists()
    stamp = finished.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert finished.stat().st_mtime_ns == stamp and "read back" in again.stdout
    assert (tmp_path / "eval" / "b.json").exists()
    assert not [p.name for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_full_disk_is_one_line_and_earlier_results_stay(trained_pair, tmp_path, data_dir, monkeypatch, capsys):
    _save_run(trained_pair[False], tmp_path / "a")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "a.json").write_text("earlier results")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("keras_pnil.files.os.fsync", full)
    code = cli.evaluate_main([str(tmp_path / "a"), "--data-dir", str(data_dir), "--budget", "quick",
                              "--num-images", "20", "--set", "checks.images=10", "--set", "pgd.steps=2", "--attacks",
                              "pgd", "--set", "square.queries=10", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    # The first stage to be kept (the clean accuracy) cannot be written: one line, nothing half-written.
    assert code == 1 and err == [f"error: cannot write {out / 'a.stages' / 'clean.json'}: No space left on device"]
    assert (out / "a.json").read_text() == "earlier results"
    assert sorted(p.name for p in out.rglob("*")) == ["a.json", "a.stages"]


def test_the_common_flags_and_every_set_reach_the_plan():
    args = cli.evaluate_parser().parse_args(["run", "--out", "o", "--budget", "quick", "--num-images", "70",
                                             "--eot-samples", "3", "--seed", "2", "--attacks", "pgd,square",
                                             "--set", "square.images=20", "--set", "square.eot_samples=2",
                                             "--set", "pgd.step_size=1/255", "--set", "checks.enabled=false"])
    request = cli._request(args, autoattack=False)
    assert request.attacks == ("pgd", "square") and request.values["num_images"] == 70
    assert request.values["eot_samples"] == 3 and request.values["seed"] == 2
    assert (request.settings["square"]["images"], request.settings["square"]["eot_samples"]) == (20, 2)
    assert request.settings["pgd"]["step_size"] == 1 / 255 and request.checks["enabled"] is False
    # Without --budget: AutoAttack's own budget for model files, the paper's for runs.
    assert cli._request(cli.evaluate_parser().parse_args(["m", "--out", "o"]), True).preset == "autoattack"
    assert cli._request(cli.evaluate_parser().parse_args(["r", "--out", "o"]), False).preset == "paper"
    options = vars(cli.train_parser().parse_args(["--out", "o", "--patience", "4", "--min-delta", "0.02",
                                                   "--pnil-bias", "-1"]))
    assert {k: options[k] for k in ("patience", "min_delta", "pnil_bias")} == {"patience": 4, "min_delta": 0.02,
                                                                             "pnil_bias": -1.0}
