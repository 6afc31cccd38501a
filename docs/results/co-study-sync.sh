#!/usr/bin/env bash
# Carries the co_study suite's run directories across sessions of a machine that keeps nothing but git.
#   save [SUITE]:    runs/co_study/SUITE/full  ->  docs/results/co_study/artifacts/SUITE  (finished runs, no TensorBoard logs)
#   restore [SUITE]: docs/results/co_study/artifacts/SUITE  ->  runs/co_study/SUITE/full  (then rerunning the suite resumes)
# SUITE: co_study (default) or co_study_regularisers.
# A run directory holds its configuration, weights, history, monitor state and done.json; evaluation/ holds the
# evaluation records, keyed on the weights, the plan, the images and the library version (so they are read back
# only by the pinned code that wrote them).
set -euo pipefail
cd "$(dirname "$0")/../.."
suite=${2:-co_study}
live=runs/co_study/$suite/full
kept=docs/results/co_study/artifacts/$suite
case "${1:-}" in
  save)
    mkdir -p "$kept/evaluation"
    for run in "$live"/*/; do
      name=$(basename "$run")
      [ "$name" = evaluation ] && continue
      [ -f "$run/done.json" ] || continue            # unfinished training stays behind (it resumes from its backup)
      rm -rf "$kept/$name" && mkdir -p "$kept/$name"
      (cd "$run" && tar --exclude ./logs --exclude ./backup --exclude ./best -cf - .) | (cd "$kept/$name" && tar -xf -)
    done
    [ -d "$live/evaluation" ] && cp -r "$live/evaluation/." "$kept/evaluation/"   # records, and stages under way
    [ -f "$live/timings.json" ] && cp "$live/timings.json" "$kept/"
    [ -f "$live/figures.json" ] && cp "$live/figures.json" "$kept/"
    du -sh "$kept" ;;
  restore)
    mkdir -p "$live"
    cp -r "$kept/." "$live/"
    ls "$live" ;;
  *) echo "usage: $0 save|restore [co_study|co_study_regularisers]" >&2; exit 2 ;;
esac
