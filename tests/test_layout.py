"""The package's shape: no import cycles, no global seeding, the public API users call."""

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np

import keras_pnil as kp

PACKAGE = Path(kp.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Project modules each module imports (at any depth of its code)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keras_pnil"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("keras_pnil")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycles_between_project_modules():
    graph, state = _imports(), {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for dependency in sorted(graph[module]):
            visit(dependency, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_no_library_module_sets_the_global_seed():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "tf.random.set_seed" in p.read_text() or "set_random_seed" in p.read_text()]
    # runs.py seeds a training run, which is the train command's own process and the user's request.
    assert offenders == ["runs.py"]


def test_the_public_api_holds_what_users_call():
    for name in ("adversarial", "AdversarialModel", "PixelwiseNoiseInjection", "robustness", "accuracy", "pgd",
                 "spsa", "apgd", "square", "autoattack", "run_autoattack", "EOT", "get_attack"):
        assert name in kp.__all__ and getattr(kp, name) is not None, name


def test_importing_the_package_and_starting_tensorflow_prints_nothing():
    code = "import keras_pnil, tensorflow as tf; tf.constant(1).numpy()"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""


def test_trainers_and_saved_models_take_a_plain_tensor_without_warnings(tmp_path):
    trainer = kp.adversarial(kp.models.small_cnn(filters=(4, 8), dense_units=16), "fgsm", 0.1)
    trainer.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (trainer, loaded):
            model(np.zeros((2, 28, 28, 1), np.float32))
