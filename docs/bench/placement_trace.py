"""Two-thread PATNet / FasterNet ratios against where the host has put this VM's two vCPUs.

On a shared VM the host may move the vCPUs between cores that share a cache (a core-to-core round trip of about
100 ns) and cores that do not (several hundred ns); every parallel region's fork and join then costs more, and a
model with more, smaller operations loses more. This runs VARIANT and its FasterNet partner (``make_runner``, two
threads) alternated in 5-call rounds for two-second windows, and between windows the round trip of
``docs/bench/placement/pingpong.c`` (built with cc; Linux, CPUs 0 and 1). Prints one row per window and the median
ratio of the windows under and over FAR_NS.

    .venv/bin/python docs/bench/placement_trace.py RUNTIME DTYPE VARIANT SECONDS [THREADS]

THREADS (default 2) may be 1, to see what the host's state does to a single thread.
"""
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

import patnet  # noqa: F401
from patnet.models import baseline_partner
from patnet.runtimes import make_runner

SOURCE = Path(__file__).with_name("placement") / "pingpong.c"
FAR_NS = 250.0
WINDOW_S = 2.0


def round_trip_ns(probe: str) -> float:
    return float(subprocess.run([probe], capture_output=True, text=True, check=True).stdout)


def window(runners: dict, ready: torch.Tensor) -> dict[str, float]:
    """Median ms of each runner over one window of alternated 5-call rounds."""
    times = {name: [] for name in runners}
    start = time.perf_counter()
    while time.perf_counter() - start < WINDOW_S:
        for name, runner in runners.items():
            for _ in range(5):
                began = time.perf_counter()
                runner(ready)
                times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    runtime, dtype, name, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    if shutil.which("cc") is None:
        sys.exit("placement_trace.py builds its probe with cc, which is not on PATH; install a C compiler")
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, 224, 224)
    names = (name, baseline_partner(name))
    runners = {n: make_runner(timm.create_model(n).eval(), runtime, dtype, x, threads) for n in names}
    ready = runners[name].prepare(x)
    with tempfile.TemporaryDirectory() as folder:
        probe = f"{folder}/pingpong"
        subprocess.run(["cc", "-O2", "-pthread", str(SOURCE), "-o", probe], check=True)
        rows, end = [], time.time() + seconds
        with torch.inference_mode():
            while time.time() < end:
                ms = window(runners, ready)
                rows.append((*ms.values(), round_trip_ns(probe)))
    print(f"{runtime} {dtype} {name}, {threads} thread(s): window | PATNet ms | FasterNet ms | ratio | round trip ns")
    for i, (model_ms, partner_ms, ns) in enumerate(rows):
        print(f"{i} | {model_ms:.3f} | {partner_ms:.3f} | {model_ms / partner_ms:.3f} | {ns:.0f}")
    for label, chosen in (("near", [r for r in rows if r[2] < FAR_NS]), ("far", [r for r in rows if r[2] >= FAR_NS])):
        if chosen:
            print(f"{label} (round trip {'<' if label == 'near' else '>='} {FAR_NS:.0f} ns): {len(chosen)} windows, "
                  f"ratio median {statistics.median(m / p for m, p, _ in chosen):.3f}, PATNet "
                  f"{statistics.median(m for m, _, _ in chosen):.3f} ms, FasterNet "
                  f"{statistics.median(p for _, p, _ in chosen):.3f} ms")


if __name__ == "__main__":
    main()
