"""Check that every variant's deploy form equals its training form on one device, in fp32.

For each model and input size: random BN statistics and relative-position tables (as the tests use), the
eval-mode training form against ``patnet.deploy`` of it, both in fp32 with TF32 off. Prints
max |deploy - train| / max |train| per case and exits 1 if any exceeds ``--tol`` (the spec's 1e-5).
The test suite checks this on the CPU; this script is how the same check runs on a GPU:

    python scripts/check_deploy.py --device cuda
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from patnet.deploy import deploy
from patnet.device import resolve_device
from patnet.models import create_model, patnet_variants
from patnet.runtimes import relative_difference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import randomize_inference_state  # noqa: E402

SIZES = ((224, 224), (64, 64), (160, 224))


@torch.no_grad()
def relative_error(name: str, device: torch.device, size: tuple[int, int]) -> float:
    model = randomize_inference_state(create_model(name)).eval().to(device)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    return relative_difference(model(x), deploy(model)(x))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--models", nargs="+", default=patnet_variants())
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    worst = 0.0
    for name in args.models:
        errors = [relative_error(name, device, size) for size in SIZES]
        worst = max(worst, *errors)
        cells = ", ".join(f"{h}x{w}: {e:.1e}" for (h, w), e in zip(SIZES, errors))
        print(f"{name:<12} deploy vs training form on {device}, fp32: {cells}", flush=True)
    print(f"worst {worst:.1e} (tolerance {args.tol:.0e}): {'ok' if worst <= args.tol else 'FAILED'}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
