"""The mutation check's list (benchmarks/mutants.toml) stays applicable: `make mutants` runs it (minutes);
this checks in seconds that every mutant still applies and names tests that exist."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if sys.version_info < (3, 11):
    pytest.skip("benchmarks/mutants.py reads TOML with tomllib (Python 3.11+)", allow_module_level=True)
sys.path.insert(0, str(ROOT / "benchmarks"))
import mutants  # noqa: E402

MUTANTS = mutants.load()


def _test_names(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_applies_once_and_names_existing_tests(mutant):
    source = (ROOT / mutant.file).read_text()
    assert mutants.apply(source, mutant) is not None, (
        f"stale: `old` occurs {source.count(mutant.old)} times in {mutant.file}; update the entry")
    compile(mutants.apply(source, mutant), mutant.file, "exec")  # still Python: a semantic change, not a typo
    for test in mutant.tests:
        file, _, name = test.partition("::")
        assert (ROOT / file).is_file(), test
        assert not name or name.split("[")[0] in _test_names(ROOT / file), test


def test_the_list_covers_the_core():
    assert len(MUTANTS) >= 20
    assert {m.file for m in MUTANTS} >= {f"keras_pnil/{name}.py" for name in ("training", "layers", "stats")} | {
        f"keras_pnil/attacks/{name}.py" for name in ("eot", "pgd", "apgd", "square", "spsa", "fab")}
