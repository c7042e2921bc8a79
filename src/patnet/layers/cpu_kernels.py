"""patnet's C++ CPU kernels for inference (``csrc/``): compiled once per machine on first use, then loaded.

``torch.ops.patnet.gated_concat`` runs PAT_ch's deploy-form gate and concatenation in one call
(``csrc/gated_concat.cpp``); ``torch.ops.patnet.small_attention`` PAT_sf's attention over short sequences
(``csrc/small_attention.cpp``); on CPUs with AVX512-BF16, ``torch.ops.patnet.partial_conv3x3`` and
``torch.ops.patnet.bf16_linear`` the partial mixers' bfloat16 3x3 conv and the deploy form's bfloat16 matrix
products (``csrc/partial_conv.cpp``, ``csrc/bf16_linear.cpp``). All but the first also run inside
``torch.compile``d graphs, with fakes for tracing. The first CPU inference call of a deployed PATNet builds them
with ``torch.utils.cpp_extension`` (about 30 s with a C++ compiler and ninja; kept in ``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``, and rebuilt only when the source changes). Where the build fails the
PyTorch form runs instead and one warning says why. ``PATNET_CPU_KERNELS=0`` skips the build and the kernels.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..runtimes.hardware import cpu_flags
from .onednn import PackedWeight

SOURCES = [Path(__file__).resolve().parent / "csrc" / name
           for name in ("gated_concat.cpp", "small_attention.cpp", "partial_conv.cpp", "bf16_linear.cpp")]
OPS = ("gated_concat", "small_attention", "partial_conv3x3", "bf16_linear")
CFLAGS = ["-O3", "-fno-tree-loop-distribute-patterns"]  # the second: short copy loops stay loops, not memcpy calls
# at::parallel_for is inline OpenMP code where torch runs on OpenMP: without -fopenmp the kernel would run on one
# thread. The library links the libgomp.so.1 torch already loaded (one thread pool, torch.set_num_threads holds).
OPENMP = sys.platform.startswith("linux") and torch.backends.openmp.is_available()
ENABLED = os.environ.get("PATNET_CPU_KERNELS", "1") != "0"  # docs/bench/change_ab.py toggles it for its A/B
# The bf16 conv and products run on AVX512-BF16's dot products; on CPUs with AMX, whose tile units oneDNN uses and
# these kernels do not, they have not been measured, so oneDNN keeps that work there.
BF16_DOT_CPU = (lambda flags: flags["avx512_bf16"] and not flags["amx_bf16"])(cpu_flags())
MAX_CONV_CHANNELS = 1024  # the kernel's input channels at most (csrc/partial_conv.cpp, kMaxInChannels)
_lock = threading.Lock()
_loaded: list[bool] = []  # empty until the first build attempt, then its outcome


def available() -> bool:
    """Whether ``torch.ops.patnet`` holds the kernels; the first call builds or loads them. Eager inference asks
    (``torch.compile`` through :func:`available_when_compiled`); TorchScript and tracing keep the PyTorch form."""
    if not ENABLED:
        return False
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_build())
    return _loaded[0]


def _build() -> bool:
    """Compiles and loads :data:`SOURCES` as the ``patnet`` operator library; False, with a warning, on failure."""
    _put_ninja_on_path()
    compiler = os.environ.get("CXX", "c++")  # the compiler torch's build calls
    missing = [tool for tool in (compiler, "ninja") if shutil.which(tool) is None]
    if missing:
        return _unavailable(f"{' and '.join(missing)} not found on PATH")
    try:
        cpp_extension = _quiet_import()
        openmp = ["-fopenmp"] if OPENMP else []
        cpp_extension.load(name="patnet_cpu_kernels", sources=[str(path) for path in SOURCES],
                           extra_cflags=CFLAGS + openmp, extra_ldflags=openmp, is_python_module=False, verbose=False)
    except Exception as exc:  # a failed build or load: the PyTorch form still runs
        return _unavailable(_first_cause(str(exc)) or type(exc).__name__)
    if not all(hasattr(torch.ops.patnet, op) for op in OPS):
        return False
    torch.library.register_fake("patnet::gated_concat", _gated_concat_shape)
    torch.library.register_fake("patnet::small_attention", _small_attention_shape)
    torch.library.register_fake("patnet::partial_conv3x3", _partial_conv_shape)
    torch.library.register_fake("patnet::bf16_linear", _bf16_linear_shape)
    return True


def pack_pairs(matrix: torch.Tensor) -> torch.Tensor:
    """A ``(K, N)`` matrix (``K`` even) in the AVX512-BF16 kernels' layout (``csrc/bf16_dot.h``): panels of 64 outputs,
    ``(N / 64 rounded up, K / 2, 64, 2)`` bfloat16, ``[panel, pair, n, j] = matrix[2 * pair + j, 64 * panel + n]``,
    zeros in the padding."""
    depth, width = matrix.shape
    pairs = F.pad(matrix.to(torch.bfloat16).reshape(depth // 2, 2, width).transpose(1, 2), (0, 0, 0, -width % 64))
    return pairs.reshape(depth // 2, -1, 64, 2).transpose(0, 1).contiguous()


def pack_for_partial_conv(weight: torch.Tensor) -> torch.Tensor:
    """A ``(C_out, C_in, 3, 3)`` conv weight (``C_in`` even) for ``partial_conv3x3``: its ``(9 C_in, C_out)`` matrix
    of taps and input channels, tap-major, by :func:`pack_pairs`."""
    return pack_pairs(weight.permute(2, 3, 1, 0).reshape(9 * weight.shape[1], weight.shape[0]))


class PackedPairs(PackedWeight):
    """A weight packed for the AVX512-BF16 kernels by ``pack`` (:func:`pack_pairs`, :func:`pack_for_partial_conv`),
    packed again when it changes."""

    def packed(self, weight: torch.Tensor, pack) -> torch.Tensor:
        return self._packed_from(weight, pack)


def _gated_concat_shape(x: torch.Tensor, conv: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gated_concat``'s output for tracing: a channels-last map shaped and typed like ``x``."""
    return torch.empty_like(x, memory_format=torch.channels_last)


def _small_attention_shape(qkv: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``small_attention``'s output for tracing: ``(B * L, C)`` rows for ``(B * L, 3 * C)`` qkv rows."""
    return qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3)


def _partial_conv_shape(x: torch.Tensor, packed: torch.Tensor, out_channels: int) -> torch.Tensor:
    """``partial_conv3x3``'s output for tracing: a channels-last ``(B, out_channels, H, W)`` map."""
    return x.new_empty(x.shape[0], out_channels, x.shape[2], x.shape[3]).contiguous(
        memory_format=torch.channels_last)


def _bf16_linear_shape(rows, packed, bias, out_features, activation, residual):
    """``bf16_linear``'s output for tracing: ``(M, out_features)`` bfloat16 rows."""
    return rows.new_empty(rows.shape[0], out_features)


@torch.compiler.assume_constant_result
def available_when_compiled() -> bool:
    """:func:`available` for ``torch.compile``: asked once while a graph is traced (building the kernels then if
    need be), its answer a constant of the graph."""
    return available()


def _unavailable(reason: str) -> bool:
    warnings.warn(f"patnet: C++ CPU kernels unavailable ({reason}); eager inference runs the PyTorch form. "
                  "Install a C++ compiler and ninja to build them, or set PATNET_CPU_KERNELS=0 to skip.",
                  RuntimeWarning, stacklevel=4)
    return False


def _first_cause(message: str) -> str:
    """The line of a build error that says what went wrong (a compiler's ``error:``, a missing file), else its
    first line; at most 200 characters."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    causes = [line for line in lines if any(mark in line.lower() for mark in ("error:", "not found", "no such file"))]
    chosen = (causes or lines or [""])[0]
    return chosen if len(chosen) <= 200 else chosen[:197] + "..."


def _put_ninja_on_path() -> None:
    """Adds the ``ninja`` wheel's binary folder to ``PATH`` when the wheel is installed (its console script lives
    in the environment's ``bin``, which is not on ``PATH`` unless the environment is activated)."""
    try:
        import ninja
    except ImportError:
        return
    folder = getattr(ninja, "BIN_DIR", None)
    if folder and folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([folder, os.environ.get("PATH", "")])


def _quiet_import():
    """``torch.utils.cpp_extension`` without its import-time note that no CUDA runtime was found."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension
