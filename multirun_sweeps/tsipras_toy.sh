#!/usr/bin/env bash
# Tsipras et al. (ICLR 2019), Sec. 2: linear model and MLP, Natural and AT (eps = 2*eta), on the toy
# distribution (conf/experiment/tsipras_toy.yaml); the report puts every measured accuracy next to its
# closed form (robustlip-tsipras toy; docs/tsipras.md).
source "$(dirname "$0")/_common.sh"
TSIPRAS=${ROBUSTLIP_TSIPRAS:-$(_bin robustlip-tsipras)}
sweep tsipras_toy experiment=tsipras_toy model=linear,mlp "+experiment/method=natural,at"
"$TSIPRAS" toy "${SWEEP_DIRS[0]}" "out_dir=${SWEEP_DIRS[0]}/report" || STATUS=1
exit $STATUS
