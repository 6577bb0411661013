#!/usr/bin/env bash
# Tsipras et al. (ICLR 2019), Sec. 2: natural vs AT test accuracy over training-set sizes, seeds as error
# bars (conf/experiment/tsipras_train_size.yaml; the MLP and a fixed step budget, for CPU time).
#   SEEDS=0,1 DIGITS_SIZES=50,200,1347 FASHION_SIZES=100,1000,10000,60000 bash multirun_sweeps/tsipras_train_size.sh
# FASHION_SEEDS (default: SEEDS) sets Fashion-MNIST's seeds apart; FASHION_SIZES= (empty) skips Fashion-MNIST. Extra arguments go to every run, e.g. trainer.max_steps=1000.
SEEDS=${SEEDS:-0,1}
source "$(dirname "$0")/_common.sh"
TSIPRAS=${ROBUSTLIP_TSIPRAS:-$(_bin robustlip-tsipras)}
DIGITS_SIZES=${DIGITS_SIZES-50,200,1347}
FASHION_SIZES=${FASHION_SIZES-100,1000,10000,60000}
if [[ -n "$DIGITS_SIZES" ]]; then
  sweep tsipras_train_size_digits experiment=tsipras_train_size data=digits "data.train_size=$DIGITS_SIZES" \
    "+experiment/method=natural,at"
fi
if [[ -n "$FASHION_SIZES" ]]; then
  SEEDS=${FASHION_SEEDS:-$SEEDS}
  sweep tsipras_train_size_fashion experiment=tsipras_train_size data=fashion_mnist "data.train_size=$FASHION_SIZES" \
    data.test_size=2000 trainer.max_steps=300 "+experiment/method=natural,at"
fi
"$TSIPRAS" train_size "${SWEEP_DIRS[@]}" "out_dir=${SWEEP_DIRS[0]}/report" || STATUS=1
exit $STATUS
