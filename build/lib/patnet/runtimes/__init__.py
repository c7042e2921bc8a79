"""Every runtime a user deploys with, for any timm model: eager PyTorch, ``torch.compile``, ONNX Runtime and
OpenVINO, in fp32 and (where the hardware has it natively) bf16.

:func:`make_runner` gives the fastest callable we know for a model, runtime and precision, with its
startup cost apart; :func:`export_openvino` writes OpenVINO IR checked against PyTorch;
:func:`describe_cpu` names the CPU and the flags a figure depends on.
"""
from .external import INSTALL_HINT, export_openvino, onnxruntime_options, openvino_config
from .hardware import (
    FLAGS_THAT_MATTER,
    check_native_bf16,
    check_threads,
    cpu_flags,
    cpu_model,
    describe_cpu,
    native_bf16,
    num_threads,
)
from .runner import (
    DTYPES,
    FP32_RTOL,
    GPU_DTYPES,
    HALF_RTOL,
    RUNTIMES,
    OutputMismatchError,
    Runner,
    input_channels,
    make_runner,
    relative_difference,
    tolerance,
    unsupported_reason,
)

__all__ = [
    "DTYPES", "FLAGS_THAT_MATTER", "FP32_RTOL", "GPU_DTYPES", "HALF_RTOL", "INSTALL_HINT", "RUNTIMES",
    "OutputMismatchError", "Runner",
    "check_native_bf16", "check_threads", "cpu_flags", "cpu_model", "describe_cpu", "export_openvino",
    "input_channels", "make_runner", "native_bf16", "num_threads", "onnxruntime_options", "openvino_config",
    "relative_difference", "tolerance", "unsupported_reason",
]
