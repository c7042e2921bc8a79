#!/usr/bin/env bash
# The Fashion-MNIST study (docs/study/README.md): `patnet study` trains whatever is missing under
# output/study (finished runs are skipped, unfinished ones resumed, so it can be stopped and run again), measures
# params, MACs and single-thread CPU latency, and writes docs/study/full/ (results.md, results.json, plot).
# About 2 hours on the 2-core machine. `scripts/study.sh --quick` is the small version (docs/study/quick/,
# under 10 minutes); `scripts/study.sh --tune` the grid that chose the recipe (docs/study/tuning/, 12 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/patnet study "$@"
