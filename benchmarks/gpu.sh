#!/usr/bin/env bash
# Every benchmark table for a GPU machine, in well under 15 minutes on one modern GPU:
# training throughput (clean, fgsm, rfgsm, nfgsm, pgd-7) without and with XLA and mixed precision,
# the attack-throughput ratios, APGD/Square against IBM ART, and the ResNet tables of issue 27 (PreActResNet-18
# against Wong et al.'s PyTorch FGSM-RS and against the official AutoAttack), the train command with and
# without --mixed-precision, and the evaluation of its run with --strategy default and mirrored. Run from the
# repository root after `make install`, with the MNIST files under KERAS_PNIL_DATA_DIR (default
# ../shared/datasets); the ResNet tables need a CUDA build of PyTorch and `pip install pyautoattack==0.2.0` in
# the same venv, and are skipped without.
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_PNIL_DATA_DIR="${KERAS_PNIL_DATA_DIR:-$(cd ../shared/datasets && pwd)}"
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices('GPU'))"
for flags in "" "--jit" "--jit --mixed-precision"; do
    $PY benchmarks/training_throughput.py --images 20000 --repeats 2 $flags
done
# With a PNIL first, XLA and mixed precision (issue 27: the PNIL draws its noise in float32, the methods' input
# gradients are loss-scaled per image).
$PY benchmarks/training_throughput.py --images 20000 --repeats 2 --pnil --jit --mixed-precision
# The train command end to end, float32 and --mixed-precision (one epoch of NFGSM + PNIL on 20,000 MNIST
# images; the command compiles without XLA), then the evaluation of that run on one device and mirrored over
# every GPU (issue 27: the same numbers; faster with more than one GPU).
RUNS="$(mktemp -d)"
for flags in "" "--mixed-precision"; do
    start=$SECONDS
    $PY -c "import sys; from keras_pnil.cli import train_main; sys.exit(train_main(sys.argv[1:]))" \
        --dataset mnist --pnil --epochs 1 --train-size 20000 --out "$RUNS/run${flags}" $flags > "$RUNS/train${flags}.log"
    echo "keras-pnil-train ${flags:-(float32)}: $((SECONDS - start)) s; $(tail -n 1 "$RUNS/train${flags}.log")"
done
for strategy in default mirrored; do
    start=$SECONDS
    $PY -c "import sys; from keras_pnil.cli import evaluate_main; sys.exit(evaluate_main(sys.argv[1:]))" \
        "$RUNS/run--mixed-precision" --budget quick --num-images 1000 --strategy $strategy \
        --out "$RUNS/evaluation-$strategy" > "$RUNS/evaluate-$strategy.log"
    echo "keras-pnil-evaluate --strategy $strategy (the mixed-precision run, quick budget, 1000 images): $((SECONDS - start)) s"
done
cmp <($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['record']['result']['worst_case_per_image'])" \
        "$RUNS/evaluation-default/run--mixed-precision.json") \
    <($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['record']['result']['worst_case_per_image'])" \
        "$RUNS/evaluation-mirrored/run--mixed-precision.json") \
    && echo "mirrored evaluation: the same per-image results as one device"
$PY benchmarks/attack_throughput.py
$PY benchmarks/attack_comparison.py --images 1000
if $PY -c "import torch, pyautoattack; assert torch.cuda.is_available()" 2>/dev/null; then
    # FGSM-RS / NFGSM against PyTorch: float32 eager, XLA, XLA + mixed precision (PyTorch: autocast float16).
    for flags in "" "--jit" "--jit --mixed-precision"; do
        $PY benchmarks/pytorch_reference.py --architecture preact_resnet18 --images 12800 --repeats 3 $flags
    done
    # AutoAttack standard, whole call against whole call (float32; ours has no XLA or mixed-precision switch).
    $PY benchmarks/autoattack_reference.py --images 1000
else
    echo "ResNet tables skipped: they need a CUDA build of PyTorch and pyautoattack (pip install torch pyautoattack==0.2.0)"
fi
