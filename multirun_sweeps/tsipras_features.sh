#!/usr/bin/env bash
# Tsipras et al. (ICLR 2019), Sec. 4 on a binary Fashion-MNIST task (conf/experiment/tsipras_features.yaml):
# a linear classifier trained naturally and adversarially (eps = 0.1), then natural training on only the
# pixels whose |correlation with the label| exceeds each threshold. The report (robustlip-tsipras features)
# plots each pixel's weight against its correlation and puts the masked models' robust accuracy next to AT's.
source "$(dirname "$0")/_common.sh"
TSIPRAS=${ROBUSTLIP_TSIPRAS:-$(_bin robustlip-tsipras)}
THRESHOLDS=${THRESHOLDS:-0.2,0.4,0.6,0.7}
sweep tsipras_features experiment=tsipras_features "+experiment/method=natural,at"
sweep tsipras_features_masked experiment=tsipras_features "callbacks.correlation_mask.threshold=$THRESHOLDS"
"$TSIPRAS" features "${SWEEP_DIRS[@]}" "out_dir=${SWEEP_DIRS[0]}/report" || STATUS=1
exit $STATUS
