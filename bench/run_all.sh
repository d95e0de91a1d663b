#!/usr/bin/env bash
# Run the emaild benchmarks in sequence (see bench/RESULTS.md and
# bench/RESULTS-inbound.md; inbound.py needs pip install -e '.[bench]').
#   bash bench/run_all.sh            # the real thing, ~20 minutes
#   bash bench/run_all.sh --quick    # a smoke test, ~3 minutes
# Uses $PYTHON, else .venv/bin/python when it exists, else python3 (it must
# have emaild installed); every script creates and removes its own state
# directory and processes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
bash scripts/tools.sh   # smtp-source/smtp-sink for the throughput and inbound benchmarks
for bench in rate throughput enqueue recovery inbound; do
    echo "=== bench/$bench.py $*"
    "$PY" "bench/$bench.py" "$@"
    echo
done
