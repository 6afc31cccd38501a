"""A non-editable install works from any directory: the suites and training configurations ship with it."""

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_non_editable_install_runs_the_shipped_experiments_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
    # The dependencies come from this environment (no second TensorFlow to download); keras_pnil itself
    # from the new one, where it is installed from a built wheel, not as an editable link.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import keras_pnil; print(keras_pnil.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=300)
    assert where.returncode == 0 and str(site) in where.stdout, where.stderr[-2000:]
    estimate = subprocess.run([str(venv / "bin" / "keras-pnil-reproduce"), "--suite", "mnist_eps03",
                               "--estimate-only"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert estimate.returncode == 0 and "estimate: mnist: 12 runs" in estimate.stdout, estimate.stderr[-2000:]
    bad = subprocess.run([str(venv / "bin" / "keras-pnil-train"), "--config", "mnist_nfgsm", "--fold", "10",
                          "--out", "run"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "argument --fold" in bad.stderr and not (elsewhere / "run").exists()
