# Sourced by the table scripts of multirun_sweeps/: one place for how a sweep is launched and reported.
#
# Environment knobs (all optional):
#   SEEDS=0,1,2          seeds to sweep (mean ± std in the report when several)   default 0
#   LAUNCHER=local       local (sequential) | per_gpu (one job per GPU) | slurm (submitit array)
#   WANDB=1              also log to wandb; runs of one sweep share the group <sweep name>
#   SWEEP_ROOT=logs/sweeps   where sweep dirs go; SWEEP_DIR=<dir> re-uses one (resume=auto picks up
#                        last.ckpt of interrupted jobs)
#   ROBUSTLIP_TRAIN / ROBUSTLIP_REPORT   the commands (default: .venv/bin/... if present, else PATH)
# Extra arguments of a table script are passed to every robustlip-train call, e.g.
#   bash multirun_sweeps/table2.sh trainer.max_epochs=2 hydra.launcher.partition=gpu
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_bin() { if [[ -x "$ROOT/.venv/bin/$1" ]]; then echo "$ROOT/.venv/bin/$1"; else echo "$1"; fi; }
TRAIN=${ROBUSTLIP_TRAIN:-$(_bin robustlip-train)}
REPORT=${ROBUSTLIP_REPORT:-$(_bin robustlip-report)}
SEP=${ROBUSTLIP_SEPARATION:-$(_bin robustlip-separation)}
SEEDS=${SEEDS:-0}
LAUNCHER=${LAUNCHER:-local}
SWEEP_ROOT=${SWEEP_ROOT:-${ROBUSTLIP_LOG_DIR:-logs}/sweeps}
STAMP=${STAMP:-$(date +%Y-%m-%d_%H-%M-%S)}
STATUS=0
SWEEP_DIRS=()

case "$LAUNCHER" in
  local | per_gpu | slurm) ;;
  *) echo "LAUNCHER=$LAUNCHER: use local, per_gpu or slurm" >&2; exit 2 ;;
esac

# The paper's method rows (conf/experiment/method/*.yaml), in the paper's order.
ALL_METHODS=natural,gr,llr,at,rst_lam05,rst_lam1,rst_lam2,trades_beta1,trades_beta3,trades_beta6

# sweep NAME ARGS...: one Hydra multirun into $SWEEP_ROOT/NAME/$STAMP; a failed job does not stop it
# (the sweep summary marks it), and the script goes on to the next sweep and the report.
sweep() {
  local name=$1; shift
  local dir=${SWEEP_DIR:-$SWEEP_ROOT/$name/$STAMP}
  local extra=(hydra/launcher="$LAUNCHER" "hydra.sweep.dir=$dir" seed="$SEEDS" resume=auto)
  if [[ "${WANDB:-0}" == 1 ]]; then
    extra+=(logger=wandb "logger.wandb.group=$name-$STAMP" "tags=[$name]")
  fi
  echo "== $name -> $dir"
  echo "   $TRAIN -m $* ${extra[*]} ${EXTRA_ARGS[*]}"
  "$TRAIN" -m "$@" "${extra[@]}" "${EXTRA_ARGS[@]}" || { echo "!! $name: some jobs failed, see $dir/sweep_summary.md" >&2; STATUS=1; }
  SWEEP_DIRS+=("$dir")
}

# report OUT TITLE: one table (md + csv + plots) over every sweep of this script.
report() {
  local out=$1 title=$2 existing=()
  for d in "${SWEEP_DIRS[@]}"; do [[ -d "$d" ]] && existing+=("$d"); done
  if [[ ${#existing[@]} -eq 0 ]]; then echo "!! nothing to report" >&2; return 1; fi
  "$REPORT" "${existing[@]}" "out_dir=$out" "title=$title" || STATUS=1
}

EXTRA_ARGS=("$@")
