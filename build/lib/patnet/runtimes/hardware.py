"""What this machine offers a runtime: the CPU's name and the instruction-set flags that decide speed,
native bf16, and thread counts.

A PATNet / FasterNet ratio depends on the CPU, so every figure names it: :func:`describe_cpu` gives the
model name and the flags that matter (avx2, avx512f, avx512_bf16, amx_bf16). bf16 runs only where the
hardware computes it natively (AVX512-BF16 or AMX on a CPU, a GPU with native bf16); elsewhere
:func:`check_native_bf16` says so in one line instead of letting a library emulate it slowly.
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterator

import torch

from ..errors import InvalidValueError

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# torch.cpu's probes, for machines without /proc/cpuinfo (amx_tile stands in for amx_bf16: they come together)
_TORCH_PROBES = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
                 "avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}


def _cpuinfo_field(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (``/proc/cpuinfo``), else what ``platform`` knows.
    The numbers tell apart machines that a virtual machine names alike: two "AMD EPYC" VMs here (3 and 6 Dec
    2026) ran compiled bf16 patnet_t0 in 6.9 and 4.8 ms; only the second's family (26, Zen 5) was recorded."""
    name = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model\t")
    return f"{name}, family {family} model {model}" if family and model else name


def mkl_gemm_is_slow() -> bool:
    """True on AMD CPUs, where MKL's fp32 GEMM runs well below oneDNN's kernels: on an AMD EPYC (avx512f,
    avx512_bf16), one thread, MKL's 2048x2048 fp32 matmul reached 89 GFLOP/s while timm's compiled FasterNet-T2
    (oneDNN convs) ran at 142. There the deploy form's large fp32 products leave MKL: eager's ``torch.addmm`` for
    prepacked oneDNN linears (:mod:`patnet.layers.onednn`), and under ``torch.compile`` (which turns a frozen fp32
    matrix product into MKL's packed GEMM, ``mkl::_mkl_linear``) the 1x1 conv form. On a Xeon (AMX) both lost
    to MKL: eager 0-14% slower, compiled 4% (docs/bench/onednn-ab-xeon.md)."""
    return _cpuinfo_field("vendor_id") in ("AuthenticAMD", "HygonGenuine")


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`FLAGS_THAT_MATTER` this CPU has (``/proc/cpuinfo``, else torch's own probes)."""
    listed = _cpuinfo_field("flags")
    if listed is not None:
        present = set(listed.split())
        return {flag: flag in present for flag in FLAGS_THAT_MATTER}
    return {flag: bool(getattr(torch.cpu, probe, lambda: False)()) for flag, probe in _TORCH_PROBES.items()}


def describe_cpu() -> str:
    """``'<model name> (avx2; no avx512f, avx512_bf16, amx_bf16)'``: the CPU as every figure names it."""
    flags = cpu_flags()
    has = [flag for flag, present in flags.items() if present]
    lacks = [flag for flag, present in flags.items() if not present]
    parts = [", ".join(has) or "none of " + ", ".join(FLAGS_THAT_MATTER)]
    if has and lacks:
        parts.append("no " + ", ".join(lacks))
    return f"{cpu_model()} ({'; '.join(parts)})"


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """True where ``device`` computes bf16 natively: a CPU with AVX512-BF16 or AMX that oneDNN uses, or a
    CUDA GPU with bf16 units (not emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_flags()
    return any(flags[flag] for flag in BF16_FLAGS) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def check_native_bf16(device: str | torch.device = "cpu") -> None:
    """Raise a one-line :class:`InvalidValueError` when ``device`` has no native bf16, naming what it lacks
    and what to use instead."""
    device = torch.device(device)
    if native_bf16(device):
        return
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no GPU"
        raise InvalidValueError(f"this GPU ({name}) has no native bf16 (torch.cuda.is_bf16_supported("
                                "including_emulation=False) is False); use fp32 or fp16 on it")
    flags = cpu_flags()
    lacks = [flag for flag in BF16_FLAGS if not flags[flag]]
    why = f"it lacks {' and '.join(lacks)}" if lacks else "oneDNN does not use its bf16 units"
    raise InvalidValueError(f"this CPU ({cpu_model()}) has no native bf16: {why}; use fp32 here (--dtype fp32), "
                            "or run bf16 on a CPU with AVX512-BF16 or AMX (e.g. Intel Sapphire Rapids, AMD Zen 4) "
                            "or on a GPU")


def check_threads(threads: int) -> int:
    """Validate a thread count against this machine's cores."""
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise InvalidValueError(f"thread count must be between 1 and {cores} (this machine's cores), got {threads}")
    return threads


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: leave as is), then restore."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
