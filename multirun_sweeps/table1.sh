#!/usr/bin/env bash
# Table 1 of the paper: train-train and test-train l_inf separation of MNIST, CIFAR-10, SVHN and
# Restricted ImageNet (robustlip-separation, conf/separation.yaml), then the table via robustlip-report.
# SVHN and Restricted ImageNet report the train-train minimum after the 4 / 6 smallest distances, as the authors.
# LAUNCHER, SEEDS and WANDB do not apply here (no training; the distances are exact).
#   bash multirun_sweeps/table1.sh                   # needs the four datasets under $ROBUSTLIP_DATA_DIR
#   QUICK=1 bash multirun_sweeps/table1.sh           # digits and Fashion-MNIST: CPU minutes
source "$(dirname "$0")/_common.sh"
separation() {
  local name=$1; shift
  local dir=${SWEEP_DIR:-$SWEEP_ROOT/$name/$STAMP}
  echo "== $name -> $dir"
  "$SEP" -m "$@" "hydra.sweep.dir=$dir" "${EXTRA_ARGS[@]}" || { echo "!! $name: some jobs failed" >&2; STATUS=1; }
  SWEEP_DIRS+=("$dir")
}
if [[ "${QUICK:-0}" == 1 ]]; then
  separation quick_table1 experiment=table1/quick data=digits,fashion_mnist
  report "$SWEEP_ROOT/quick_table1/$STAMP/report" "Quick Table 1 (separation)"
else
  # conf/experiment/table1/*.yaml; SVHN and Restricted ImageNet skip the 4 / 6 smallest train-train distances.
  separation table1 experiment=table1/mnist,table1/cifar10,table1/svhn,table1/restricted_imagenet
  report "$SWEEP_ROOT/table1/$STAMP/report" "Table 1 (separation, l_inf)"
fi
exit $STATUS
