#!/usr/bin/env bash
# Sets everything up on a fresh machine (dependencies and Debian's Fashion-MNIST) and runs the main job:
# a short training of patnet_t0 on Fashion-MNIST with evaluation and a report (scripts/train_quick.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/train_quick.sh "$@"
