#!/usr/bin/env bash
# Any grid of β and λ, not only the paper's rows: one multirun per objective, because each objective has
# its own keys (a cross product objective=trades,rst x objective.beta=... would give RST a `beta`).
#   EXPERIMENT=quick_table2 BETAS=1,3,6,10 LAMS=0.5,1,2,4 bash multirun_sweeps/methods_grid.sh
source "$(dirname "$0")/_common.sh"
EXPERIMENT=${EXPERIMENT:-quick_table2}
sweep "${EXPERIMENT}_plain" "experiment=$EXPERIMENT" objective=natural,gr,llr,at
sweep "${EXPERIMENT}_rst" "experiment=$EXPERIMENT" objective=rst "objective.lam=${LAMS:-0.5,1,2}"
sweep "${EXPERIMENT}_trades" "experiment=$EXPERIMENT" objective=trades "objective.beta=${BETAS:-1,3,6}"
report "$SWEEP_ROOT/${EXPERIMENT}_grid/$STAMP" "$EXPERIMENT: β and λ grid"
exit $STATUS
