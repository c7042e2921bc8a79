#!/usr/bin/env bash
# Measure the default table (patnet_t0..s against fasternet_t0..s, training and deploy form) into
# docs/bench/ (bench.json, bench.md, bench.png). Takes about 10 minutes on 2 cores.
# Run it on a quiet machine: other load distorts absolute times (the header records the load average).
# Extra arguments are passed on, e.g. --accuracy results.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m patnet.cli bench --out-dir docs/bench "$@"
