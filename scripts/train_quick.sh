#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh: dependencies and Debian's Fashion-MNIST), then trains patnet_t0 on
# Fashion-MNIST for two epochs at 64 px (`patnet train --preset quick`), evaluates the best checkpoint and
# lists the report files. About 6-8 minutes on a 2-core CPU. Extra arguments go to `patnet train`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
run_dir=output/quick
.venv/bin/patnet train --preset quick --output "$run_dir" "$@"
.venv/bin/patnet eval --checkpoint "$run_dir/best" --output "$run_dir/eval"
echo "report: $run_dir/metrics.csv, $run_dir/curves.png, $run_dir/eval/eval.json, $run_dir/eval/confusion.png"
echo "wall time: $(( $(date +%s) - start )) s"
