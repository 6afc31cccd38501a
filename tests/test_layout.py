"""The package's shape: no import cycles, no global seeding, the public API users call."""

import ast
from pathlib import Path

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
