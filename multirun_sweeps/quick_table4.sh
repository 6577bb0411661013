#!/usr/bin/env bash
# Table 4 in CPU minutes: dropout 0 / 0.5 for Natural, AT, RST(λ=2), TRADES(β=3), TRADES(β=6) on
# Fashion-MNIST with CNN1 (conf/experiment/quick_table4.yaml).
source "$(dirname "$0")/_common.sh"
sweep quick_table4 experiment=quick_table4 "+experiment/method=natural,at,rst_lam2,trades_beta3,trades_beta6" \
  model.dropout=0.0,0.5
report "${SWEEP_DIRS[0]}/report" "Quick Table 4 (dropout; Fashion-MNIST, eps=0.1)"
exit $STATUS
