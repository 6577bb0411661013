#!/usr/bin/env bash
# Table 4 of the paper: dropout off/on for Natural, AT, RST(λ=2), TRADES(β=3), TRADES(β=6):
# SVHN with WRN-40-10 dropout 0 / 0.5, CIFAR-10 with dropout 0 / 0.2 (conf/experiment/table4_*.yaml).
# ONLY=svhn or ONLY=cifar10 runs one dataset.
source "$(dirname "$0")/_common.sh"
METHODS=natural,at,rst_lam2,trades_beta3,trades_beta6
ONLY=${ONLY:-all}
if [[ $ONLY == all || $ONLY == svhn ]]; then
  sweep table4_svhn experiment=table4_svhn "+experiment/method=$METHODS" model.dropout=0.0,0.5
fi
if [[ $ONLY == all || $ONLY == cifar10 ]]; then
  sweep table4_cifar10 experiment=table4_cifar10 "+experiment/method=$METHODS" model.dropout=0.0,0.2
fi
report "$SWEEP_ROOT/table4/$STAMP" "Table 4 (dropout; SVHN and CIFAR-10, eps=0.031)"
exit $STATUS
