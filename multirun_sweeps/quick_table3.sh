#!/usr/bin/env bash
# Table 3 in CPU minutes: the ten method rows on Fashion-MNIST with CNN2, 60 batches per epoch
# (conf/experiment/quick_table3.yaml; needs the Fashion-MNIST files, Debian package dataset-fashion-mnist).
source "$(dirname "$0")/_common.sh"
sweep quick_table3 experiment=quick_table3 "+experiment/method=$ALL_METHODS"
report "${SWEEP_DIRS[0]}/report" "Quick Table 3 (Fashion-MNIST, eps=0.1)"
exit $STATUS
