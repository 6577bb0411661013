#!/usr/bin/env bash
# Table 3 of the paper: CIFAR-10 (WRN-40-10, eps 0.031) and Restricted ImageNet (ResNet-50, eps 0.005),
# the ten method rows; per-method lr from the presets (conf/experiment/table3_*.yaml).
# Restricted ImageNet uses LLR with (λ, μ) = (3, 6). ONLY=cifar10 or ONLY=restricted_imagenet runs one.
#   LAUNCHER=per_gpu bash multirun_sweeps/table3.sh
source "$(dirname "$0")/_common.sh"
ONLY=${ONLY:-all}
if [[ $ONLY == all || $ONLY == cifar10 ]]; then
  sweep table3_cifar10 experiment=table3_cifar10 "+experiment/method=$ALL_METHODS"
fi
if [[ $ONLY == all || $ONLY == restricted_imagenet ]]; then
  sweep table3_restricted_imagenet experiment=table3_restricted_imagenet \
    "+experiment/method=${ALL_METHODS/llr/llr36}"
fi
report "$SWEEP_ROOT/table3/$STAMP" "Table 3 (CIFAR-10 eps=0.031, Restricted ImageNet eps=0.005)"
exit $STATUS
