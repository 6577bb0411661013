#!/usr/bin/env bash
# Table 1 of the paper: train-train and test-train l_inf separation of MNIST, CIFAR-10, SVHN and
# Restricted ImageNet (robustlip-separation, conf/separation.yaml), then the table via robustlip-report.
# SVHN drops the duplicate / mislabelled training images the authors name (SPEC §10).
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
  separation quick_table1 data=digits,fashion_mnist
  report "$SWEEP_ROOT/quick_table1/$STAMP/report" "Quick Table 1 (separation)"
else
  separation table1 data=mnist,cifar10,restricted_imagenet
  separation table1_svhn data=svhn "drop_indices=[25235,11933,65043]"
  report "$SWEEP_ROOT/table1/$STAMP/report" "Table 1 (separation, l_inf)"
fi
exit $STATUS
