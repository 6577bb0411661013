#!/usr/bin/env bash
# Robust self-training with unlabeled data on Fashion-MNIST with 1,000 labels (docs/raghunathan.md):
# Natural and AT on the labels only, RST(λ=1) on the labels only, and RST(λ=1) with the rest of the
# training split pseudo-labeled by the natural model of the first seed (conf/experiment/raghunathan_rst.yaml).
#   SEEDS=0,1,2 bash multirun_sweeps/raghunathan_rst.sh
source "$(dirname "$0")/_common.sh"
# One thread per training process unless set: on a shared CPU, torch's default (one per core)
# oversubscribes the cores; here a PGD step became 35 times slower (docs/raghunathan.md).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# 1. Natural training on the labeled subset: the Natural row; the first seed's model is the teacher.
sweep raghunathan_natural experiment=raghunathan_rst objective=natural
TEACHER=${TEACHER:-${SWEEP_DIRS[0]}/0/checkpoints/last.ckpt}
if [[ ! -f "$TEACHER" ]]; then echo "!! no teacher checkpoint at $TEACHER" >&2; exit 1; fi
# 2. AT and labelled-only RST.
sweep raghunathan_labeled experiment=raghunathan_rst objective=at,rst
# 3. RST with the unlabeled pool: 64 labeled + 64 pseudo-labeled examples per batch.
sweep raghunathan_unlabeled experiment=raghunathan_rst objective=rst "self_training.teacher_ckpt=$TEACHER" \
  data.unlabeled=true data.batch_size=128
report "${SWEEP_DIRS[0]}/report" "RST with unlabeled data (Fashion-MNIST, 1,000 labels, eps=0.1)"
exit $STATUS
