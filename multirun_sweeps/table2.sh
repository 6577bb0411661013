#!/usr/bin/env bash
# Table 2 of the paper: MNIST (eps 0.1), CNN1 and CNN2, the ten method rows (Natural, GR, LLR, AT,
# RST λ∈{.5,1,2}, TRADES β∈{1,3,6}) with the authors' settings (conf/experiment/table2_mnist_cnn*.yaml).
#   bash multirun_sweeps/table2.sh                       # 20 runs of 160 epochs: use GPUs
#   LAUNCHER=per_gpu SEEDS=0,1,2 bash multirun_sweeps/table2.sh
#   LAUNCHER=slurm bash multirun_sweeps/table2.sh hydra.launcher.partition=gpu
#   ONLY=cnn1 bash multirun_sweeps/table2.sh             # one network's ten rows (table2_mnist_cnn1)
source "$(dirname "$0")/_common.sh"
ONLY=${ONLY:-all}
case "$ONLY" in
  all | cnn1 | cnn2) ;;
  *) echo "ONLY=$ONLY: use all, cnn1 or cnn2" >&2; exit 2 ;;
esac
for arch in cnn1 cnn2; do
  if [[ $ONLY == all || $ONLY == "$arch" ]]; then
    sweep "table2_mnist_$arch" "experiment=table2_mnist_$arch" "+experiment/method=$ALL_METHODS"
  fi
done
report "$SWEEP_ROOT/table2/$STAMP" "Table 2 (MNIST, eps=0.1)"
exit $STATUS
