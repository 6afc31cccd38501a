"""Mutation check: does a green test run prove what the library claims? (`make mutants`)

Each entry of `benchmarks/mutants.toml` is one semantic mutant of the core: a single textual replacement
(`old` → `new`, `old` found exactly once in `file`) that breaks one claim, and the tests that must then fail.
This script copies the package and its tests to a temporary directory, checks that the copy is what the tests
import, runs all the listed tests once on the unmutated copy (they must pass: otherwise a failure would say
nothing about the mutant), then applies each mutant in turn and runs its tests with `-x`:

- killed: a listed test failed;
- SURVIVED: every listed test passed: the tests do not prove the claim the mutant breaks;
- STALE: `old` is not in the file exactly once (the source changed under the list: update the entry);
- BROKEN: the mutant does not import or its tests are not collected (not a semantic mutant: fix the entry).

It prints one line per mutant and `N of M mutants killed in S s`, and exits non-zero unless every mutant
was killed. The list lives beside this script and grows with the code: a new claim, a new mutant.

    python benchmarks/mutants.py [ID ...] [--list] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the package supports it, this developer tool does not
    raise SystemExit("benchmarks/mutants.py needs Python 3.11 or later (tomllib)") from None

ROOT = Path(__file__).resolve().parents[1]
LIST = Path(__file__).with_name("mutants.toml")
COPIED = ("keras_pnil", "tests", "pyproject.toml")  # what the tests need (the package reads no other file)
TIMEOUT = 900  # seconds per mutant: a mutant that makes a test hang counts as killed, and says so


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


def load(path: Path = LIST) -> list[Mutant]:
    """The mutants of `path`, each checked for its fields (ids unique, old ≠ new, at least one test)."""
    entries = tomllib.loads(path.read_text())["mutant"]
    mutants = []
    for entry in entries:
        missing = {"id", "file", "old", "new", "tests", "why"} - set(entry)
        if missing:
            raise SystemExit(f"{path}: mutant {entry.get('id', entry)!r} lacks {sorted(missing)}")
        mutant = Mutant(**{**entry, "tests": tuple(entry["tests"])})
        if mutant.old == mutant.new or not mutant.tests:
            raise SystemExit(f"{path}: mutant {mutant.id!r} changes nothing or names no test")
        mutants.append(mutant)
    ids = [m.id for m in mutants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"{path}: duplicate mutant ids {duplicates}")
    return mutants


def apply(source: str, mutant: Mutant) -> str | None:
    """`source` with the mutant's one replacement, or None when `old` is not in it exactly once."""
    if source.count(mutant.old) != 1:
        return None
    return source.replace(mutant.old, mutant.new)


def _environment(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet its mutant's cached bytecode
    env["COLUMNS"] = "300"  # wide enough for pytest to keep the error beside each failed test in its summary
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The tests find the data beside the repository; the copy is elsewhere, so point at it explicitly.
    env.setdefault("KERAS_PNIL_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    env["KERAS_PNIL_REQUIRE_DATA"] = "1"  # missing data must fail the baseline, not skip a mutant's tests
    return env


def _pytest(copy: Path, env: dict, tests, timeout: int = TIMEOUT) -> tuple[int | None, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


def _copy_tree(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)


def _check_import(copy: Path, env: dict) -> None:
    done = subprocess.run([sys.executable, "-c", "import keras_pnil; print(keras_pnil.__file__)"], cwd=copy,
                          env=env, capture_output=True, text=True)
    imported = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    if not Path(imported).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the tests would import keras_pnil from {imported}, not from the copy {copy}")
    print(f"keras_pnil imported from the copy: {imported}", flush=True)


def _reason(output: str) -> str:
    """What failed, from pytest's short summary: `test_name: ExceptionType` (an assertion, one hopes)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            test, _, error = line.split(" ", 1)[1].partition(" - ")
            return f"{test.rsplit('::', 1)[-1]}: {error.split(':')[0][:80] or line.split()[0]}"
    return ""


def _verdict(returncode: int | None) -> str:
    if returncode is None:
        return "killed (timeout)"
    return {0: "SURVIVED", 1: "killed"}.get(returncode, f"BROKEN (pytest exit {returncode})")


def run(mutants: list[Mutant], baseline: bool = True) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keras-pnil-mutants-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        env = _environment(copy)
        _check_import(copy, env)
        if baseline:
            tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
            code, output = _pytest(copy, env, tests, timeout=3 * TIMEOUT)
            if code != 0:
                print(output[-4000:])
                raise SystemExit(f"the listed tests do not pass on the unmutated copy (pytest exit {code}): "
                                 "fix them before judging mutants")
            print(f"baseline: the {len(tests)} listed tests pass unmutated "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
        killed = 0
        for mutant in mutants:
            path = copy / mutant.file
            original = path.read_text()
            mutated = apply(original, mutant)
            if mutated is None:
                print(f"STALE     {'':>6}  {mutant.id}: `old` occurs {original.count(mutant.old)} times in "
                      f"{mutant.file}, not once", flush=True)
                continue
            path.write_text(mutated)
            start = time.perf_counter()
            try:
                code, output = _pytest(copy, env, mutant.tests)
            finally:
                path.write_text(original)
            verdict = _verdict(code)
            killed += verdict.startswith("killed")
            reason = f"  ({_reason(output)})" if verdict == "killed" else ""
            print(f"{verdict:<9} {time.perf_counter() - start:5.0f}s  {mutant.id}{reason}", flush=True)
            if not verdict.startswith("killed"):
                print(f"          {mutant.why}\n          tests: {' '.join(mutant.tests)}")
                if verdict.startswith("BROKEN"):
                    print(output[-2000:])
    print(f"{killed} of {len(mutants)} mutants killed in {time.perf_counter() - started:.0f} s")
    return 0 if killed == len(mutants) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the listed tests")
    args = parser.parse_args(argv)
    mutants = load()
    unknown = set(args.ids) - {m.id for m in mutants}
    if unknown:
        raise SystemExit(f"unknown mutant id(s) {sorted(unknown)}")
    chosen = [m for m in mutants if not args.ids or m.id in args.ids]
    if args.list:
        for m in chosen:
            print(f"{m.id:<40} {m.file:<32} {m.why}")
        return 0
    return run(chosen, baseline=not args.no_baseline)


if __name__ == "__main__":
    sys.exit(main())
