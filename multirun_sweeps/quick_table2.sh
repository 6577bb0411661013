#!/usr/bin/env bash
# Table 2 in CPU minutes: the ten method rows on scikit-learn digits with the small digits CNN
# (conf/experiment/quick_table2.yaml). Runs on a laptop; the report lands in
# $SWEEP_ROOT/quick_table2/<stamp>/report/report.md.
#   bash multirun_sweeps/quick_table2.sh
#   SEEDS=0,1 bash multirun_sweeps/quick_table2.sh trainer.max_epochs=3
#   SEEDS=0,1,2 METHODS=natural,at,trades_beta6 bash multirun_sweeps/quick_table2.sh select_best=val   # best and final
source "$(dirname "$0")/_common.sh"
METHODS=${METHODS:-$ALL_METHODS}
sweep quick_table2 experiment=quick_table2 "+experiment/method=$METHODS"
report "${SWEEP_DIRS[0]}/report" "Quick Table 2 (digits, eps=0.1)"
exit $STATUS
