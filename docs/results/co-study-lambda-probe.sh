#!/usr/bin/env bash
# GradAlign's and ELLE's lambda on MNIST eps = 0.3 (issue 25): neither paper gives an MNIST value, and the
# authors' CIFAR-10 values for their largest eps (GradAlign 2.0, ELLE 10,000) gave constant classifiers here.
# Seed 0, Wong et al.'s MNIST net and recipe exactly as the co_study suite trains it; only the per-epoch
# validation monitor (PGD-10 on 500 of the 5,000 validation images) is read: no test image is used.
cd "$(dirname "$0")/../.."; export KERAS_PNIL_DATA_DIR=${KERAS_PNIL_DATA_DIR:-../shared/datasets} TF_CPP_MIN_LOG_LEVEL=2
mkdir -p runs/lambda_probe
probe() {  # method flag value
  out=runs/lambda_probe/$1-$3
  [ -f $out/done.json ] || .venv/bin/keras-pnil-train --config mnist_eps03_wong --method $1 $2 $3 --seed 0 \
     --validation-size 5000 --monitor-images 500 --monitor-eot 4 --out $out > $out.log 2>&1
  python3 - "$out" "$1" "$3" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/history.csv")))
clean = " ".join(f"{float(r['val_clean_accuracy']):.2f}" for r in rows)
pgd = " ".join(f"{float(r['pgd_val_accuracy']):.2f}" for r in rows)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {clean} | {pgd} |")
PY
}
echo "| method | lambda | validation clean accuracy, epochs 1-10 | validation PGD-10 accuracy, epochs 1-10 |"
echo "|---|---|---|---|"
# Each argument is "METHOD LAMBDA"; the default is the probe's first round.
[ $# -gt 0 ] || set -- "gradalign 0.02" "elle 100"
for run in "$@"; do read -r method lam <<< "$run"; probe "$method" "--$method-lambda" "$lam"; done
