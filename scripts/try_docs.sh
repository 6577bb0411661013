#!/usr/bin/env bash
# Run every command of README.md and docs/*.md that fits a CPU, in a small setting (scripts/try_docs.py):
#   bash scripts/try_docs.sh [--quick] [--list] [--keep] [--only REGEX]
# Fails on a command that exits non-zero or a run that ends at chance accuracy. CI runs --quick (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
exec "$PY" scripts/try_docs.py "$@"
