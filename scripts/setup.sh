#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with torch, timm and patnet (editable),
# and, when apt is available, Debian's Fashion-MNIST package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch 2.14.1 / torchvision 0.29.1 install from this machine's local disk; timm comes from PyPI.
.venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q --disable-pip-version-check -e ".[export,detection,test]"
if [ "${PATNET_SKIP_DATA:-0}" != "1" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
    else
        echo "note: Fashion-MNIST not found; install Debian's dataset-fashion-mnist to train on it" >&2
    fi
fi
