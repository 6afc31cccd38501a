#!/usr/bin/env bash
# Every benchmark table for a GPU machine, in well under 15 minutes on one modern GPU:
# training throughput (clean, fgsm, rfgsm, nfgsm, pgd-7) without and with XLA and mixed precision,
# the attack-throughput ratios, and APGD/Square against IBM ART. Run from the repository root after
# `make install`, with the MNIST files under KERAS_PNIL_DATA_DIR (default ../shared/datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_PNIL_DATA_DIR="${KERAS_PNIL_DATA_DIR:-$(cd ../shared/datasets && pwd)}"
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices('GPU'))"
for flags in "" "--jit" "--jit --mixed-precision"; do
    $PY benchmarks/training_throughput.py --images 20000 --repeats 2 $flags
done
$PY benchmarks/attack_throughput.py
$PY benchmarks/attack_comparison.py --images 1000
