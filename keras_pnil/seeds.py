"""Results over training seeds: which runs collapsed, and each method's distribution of robust accuracy.

One-step adversarial training is bimodal at large ε: some seeds give a robust model, others collapse
(catastrophic overfitting) to near-zero robust accuracy. One seed proves nothing; this module turns a
suite's runs over seeds into the per-method numbers that answer "does it collapse, how often, and how robust
is it when it does not": the collapse count under one rule (`collapsed`), and mean ± std of each attack's
accuracy over all seeds and over the runs that did not collapse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from keras_pnil.stats import fisher_exact_p, mann_whitney_p

# A run collapsed when its final per-epoch PGD accuracy is below this fraction of its best epoch's.
COLLAPSE_FRACTION = 0.5
# The per-epoch PGD accuracy the rule reads (`history.csv`; with EOT for PNIL models, as it is evaluated).
COLLAPSE_CURVE = "pgd_val_accuracy"
STAT_ATTACKS = ("pgd", "autoattack", "min")  # the columns reported over seeds, where present


def collapsed(curve: Sequence[float], fraction: float = COLLAPSE_FRACTION) -> bool | None:
    """Whether a run collapsed: its final per-epoch robust accuracy is below `fraction` of its best epoch's.

    None when there is no curve (a run trained without the per-epoch PGD check cannot be judged).

    Example:
        >>> collapsed([0.30, 0.72, 0.76, 0.08, 0.23])  # best 0.76, final 0.23 < 0.38
        True
        >>> collapsed([0.30, 0.72, 0.80, 0.78])
        False
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the collapse fraction must lie in (0, 1), got {fraction}")
    values = [float(v) for v in curve]
    if not values:
        return None
    return values[-1] < fraction * max(values)


@dataclass(frozen=True)
class MethodOverSeeds:
    """One method's runs over seeds on one data set: the collapse count and each attack's accuracies."""

    dataset: str
    method: str
    pnil: bool
    seeds: tuple  # the seeds reported (those trained and evaluated so far)
    collapsed: tuple  # per seed: True, False or None (no per-epoch curve)
    accuracies: Mapping  # attack (and "clean") -> per-seed accuracies, in the order of `seeds`

    @property
    def collapse_count(self) -> int:
        return sum(1 for c in self.collapsed if c)

    def stats(self, column: str, stable_only: bool = False) -> tuple[float, float, int] | None:
        """(mean, sample std, n) of `column` over all seeds, or over the runs that did not collapse.

        Example:
            >>> row.stats("pgd")  # doctest: +SKIP
            (0.52, 0.39, 5)
        """
        values = [v for v, c in zip(self.accuracies.get(column, ()), self.collapsed, strict=True)
                  if v is not None and not (stable_only and c is not False)]
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def over_seeds(specs, records, histories: Mapping) -> list[MethodOverSeeds]:
    """Groups the runs of `specs` (with `records`, their evaluation records, in the same order) by data set,
    method and PNIL over seeds; `histories` maps a run's name to its per-epoch log ({column: values}).

    Example:
        >>> rows = over_seeds(specs, records, {s.name: read_history(runs / s.name / "history.csv") for s in specs})
        >>> rows[0].collapse_count, rows[0].stats("pgd")  # doctest: +SKIP
        (3, (0.31, 0.40, 5))
    """
    if len(specs) != len(records):
        raise ValueError(f"{len(specs)} runs but {len(records)} evaluation records: pass one record per run")
    groups: dict = {}
    for spec, record in zip(specs, records, strict=True):
        groups.setdefault((spec.dataset, spec.method, spec.pnil), []).append((spec, record))
    rows = []
    for (dataset, method, pnil), members in groups.items():
        members.sort(key=lambda m: (m[0].seed is None, m[0].seed))
        columns = ("clean", *(a for a in STAT_ATTACKS if any(a in r for _, r in members)))
        rows.append(MethodOverSeeds(
            dataset, method, pnil, tuple(s.seed for s, _ in members),
            tuple(collapsed(histories.get(s.name, {}).get(COLLAPSE_CURVE, [])) for s, _ in members),
            {c: tuple(r.get(c) for _, r in members) for c in columns}))
    return rows


def _cell(stats) -> str:
    return "–" if stats is None else f"{100 * stats[0]:.1f} ± {100 * stats[1]:.1f}"


def over_seeds_markdown(rows: Sequence[MethodOverSeeds]) -> str:
    """A table of `over_seeds`' rows: collapse count, and per attack mean ± std over all seeds and over the
    runs that did not collapse (n in brackets where fewer than all), in percent.

    Example:
        >>> print(over_seeds_markdown(over_seeds(specs, records, histories)))  # doctest: +SKIP
        | data set | method | PNIL | seeds | collapsed | clean | PGD (all) | PGD (not collapsed) | ...
    """
    attacks = [a for a in STAT_ATTACKS if any(a in r.accuracies for r in rows)]
    names = {"pgd": "PGD", "autoattack": "AutoAttack", "min": "Min"}
    header = ["data set", "method", "PNIL", "seeds", "collapsed", "clean"]
    for attack in attacks:
        header += [f"{names[attack]} (all)", f"{names[attack]} (not collapsed)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        judged = sum(1 for c in row.collapsed if c is not None)
        cells = [row.dataset, row.method, "yes" if row.pnil else "no", ", ".join(str(s) for s in row.seeds),
                 f"{row.collapse_count} of {judged}", _cell(row.stats("clean"))]
        for attack in attacks:
            stable = row.stats(attack, stable_only=True)
            suffix = "" if stable is None or stable[2] == len(row.seeds) else f" (n={stable[2]})"
            cells += [_cell(row.stats(attack)), _cell(stable) + suffix]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DistributionComparison:
    """Two sets of runs of one method over seeds (ours and a reference), compared as distributions.

    `collapse_p` is Fisher's exact test (two-sided) on the collapse counts; `accuracy_p` and `stable_p` are
    the exact two-sided Mann-Whitney U test on the robust accuracies of all runs and of the runs that did not
    collapse (None where a side has no such run). Seeds do not carry over between frameworks, so this is the
    honest comparison: with 5 seeds a side, only large differences can be told apart (the smallest possible
    two-sided p is 0.008 for the accuracies and 0.008 for 0 of 5 against 5 of 5 collapses).
    """

    ours_collapsed: int
    ours_runs: int
    reference_collapsed: int
    reference_runs: int
    collapse_p: float
    accuracy_p: float | None
    stable_p: float | None

    def matches(self, level: float = 0.05) -> bool:
        """Whether no test tells the two distributions apart at `level`."""
        return all(p is None or p >= level for p in (self.collapse_p, self.accuracy_p, self.stable_p))


def compare_distributions(ours: Sequence[tuple[bool, float]],
                          reference: Sequence[tuple[bool, float]]) -> DistributionComparison:
    """Compares two methods' runs over seeds, each given as (collapsed, robust accuracy) per run.

    Example:
        >>> c = compare_distributions([(False, 0.87), (False, 0.60), (True, 0.0)],
        ...                           [(False, 0.89), (False, 0.75), (False, 0.82)])
        >>> c.ours_collapsed, c.reference_collapsed, c.matches()
        (1, 0, True)
    """
    for name, runs in (("ours", ours), ("reference", reference)):
        if not runs:
            raise ValueError(f"no runs in {name}: pass at least one (collapsed, accuracy) pair a side")
        for flag, value in runs:
            if not isinstance(flag, bool | np.bool_) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} has the run ({flag!r}, {value!r}): each run is (collapsed: bool, "
                                 f"accuracy in [0, 1])")
    ours_c, ref_c = sum(bool(c) for c, _ in ours), sum(bool(c) for c, _ in reference)
    collapse_p = fisher_exact_p(ours_c, len(ours), ref_c, len(reference))
    return DistributionComparison(
        ours_c, len(ours), ref_c, len(reference), collapse_p,
        mann_whitney_p([float(a) for _, a in ours], [float(a) for _, a in reference]),
        mann_whitney_p([float(a) for c, a in ours if not c], [float(a) for c, a in reference if not c]))
