#!/usr/bin/env bash
# Fashion-MNIST: at which eps does FGSM-RS (Wong et al.'s MNIST net and recipe) collapse? (issue 25)
cd /work/main; export KERAS_PNIL_DATA_DIR=/work/shared/datasets TF_CPP_MIN_LOG_LEVEL=2
for eps in 0.3 0.25; do for seed in 0 1 2; do
  out=runs/fmnist_probe/eps$eps-seed$seed
  .venv/bin/keras-pnil-train --config mnist_eps03_wong --dataset fashion_mnist --epsilon $eps --seed $seed \
     --validation-size 2000 --monitor-images 500 --out $out > $out.log 2>&1
  echo "eps $eps seed $seed: $(grep -i 'pgd\|robust' $out.log | tail -2 | tr '\n' ' ')"
done; done
