"""One call, :func:`make_runner`, gives the fastest callable we know for a model, runtime and precision.

Runtimes: ``eager`` PyTorch, ``compile`` (inductor with ``freezing``), ``onnxruntime`` and ``openvino``
(both on the ONNX file ``patnet export`` writes). Every runner takes a float32 NCHW batch of its example's
shape and returns float32 outputs; it works for any timm model (timm's FasterNet included), so a
PATNet / FasterNet comparison is always same-runtime, same-precision. What a runner costs before its
first output (deploy, export, compile) is kept apart from its steady-state latency, and its output on
the example is checked against eager fp32 so a runtime that computes a model wrongly is never timed.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable

import torch
from torch import Tensor, nn

from ..deploy import deploy
from ..device import resolve_device
from ..errors import InvalidTypeError, InvalidValueError
from .hardware import check_native_bf16, check_threads, num_threads

RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
DTYPES = ("fp32", "bf16")
GPU_DTYPES = (*DTYPES, "fp16")  # fp16: autocast on a CUDA GPU only
FORMS = ("train", "deploy")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_ONLY_RUNTIMES = ("onnxruntime", "openvino")
FP32_RTOL = 1e-4  # CPU fp32 runtimes against eager fp32, of the output's scale (as patnet.export checks)
TF32_RTOL = 1e-2  # CUDA "fp32": cuDNN convolutions may run in TF32 (10-bit mantissa)
HALF_RTOL = 5e-2  # bf16 / fp16 against fp32: about 1% measured on random-init T0-S at 224, five times that
RECOMPILE_LIMIT = 1024  # torch.compile recompiles per model instance (freezing guards on the weights)

Forward = Callable[[Tensor], Tensor]


class OutputMismatchError(RuntimeError):
    """A runtime computed a model's output wrongly on the example (beyond the precision's tolerance)."""


class Runner:
    """A model ready to run in one runtime and precision: ``runner(x)`` with a float32 NCHW batch of the
    example's shape returns float32 outputs.

    ``build_s`` is what came before the first call (deploy, ONNX export, conversion, session), and
    ``first_call_s`` the first call itself (``torch.compile`` compiles there); ``relative_diff`` is the
    first output's largest difference from eager fp32, as a fraction of its scale (None: not checked).
    """

    def __init__(self, forward: Forward, prepare: Forward, *, runtime: str, dtype: str, device: torch.device,
                 threads: int | None, form: str, input_shape: tuple[int, ...]):
        self._forward, self._prepare = forward, prepare
        self.runtime, self.dtype, self.device, self.threads, self.form = runtime, dtype, device, threads, form
        self.input_shape = input_shape
        self.build_s = self.first_call_s = 0.0
        self.relative_diff: float | None = None

    @property
    def startup_s(self) -> float:
        """Seconds from :func:`make_runner`'s start to the first output."""
        return self.build_s + self.first_call_s

    def prepare(self, x: Tensor) -> Tensor:
        """``x`` as the runtime takes it (device, dtype, layout); calling the runner with the result skips
        the conversion, as a timing loop should."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = getattr(x, "dtype", type(x).__name__)
            raise InvalidTypeError(f"a runner takes a floating-point tensor, got {got}")
        if tuple(x.shape) != self.input_shape:
            raise InvalidValueError(f"this runner was built for inputs of shape {self.input_shape}, got "
                                    f"{tuple(x.shape)}; make a runner with an example of the shape you will run")
        return self._prepare(x)

    def __call__(self, x: Tensor) -> Tensor:
        x = self.prepare(x)
        with num_threads(self.threads):
            return self._forward(x)

    def __repr__(self) -> str:
        return (f"Runner({self.runtime}, {self.dtype}, {self.form} form, {self.device}, threads={self.threads}, "
                f"input {self.input_shape}, startup {self.startup_s:.2f} s)")


def unsupported_reason(runtime: str, dtype: str, device: str | torch.device = "cpu") -> str | None:
    """Why ``runtime`` cannot run ``dtype`` on ``device`` at all (whatever the hardware), or None."""
    device = torch.device(device)
    if runtime in CPU_ONLY_RUNTIMES and device.type != "cpu":
        return f"{runtime} runs on the CPU only here; on the GPU use the eager or compile runtime"
    if dtype == "fp16" and device.type != "cuda":
        return "fp16 runs on a CUDA GPU only (autocast); on the CPU use fp32, or bf16 where it is native"
    if runtime == "onnxruntime" and dtype != "fp32":
        return "ONNX Runtime's CPU provider has no bf16 kernels for these models; use openvino or compile for bf16"
    return None


def input_channels(model: nn.Module) -> int:
    """The channels ``model`` takes: its ``in_chans`` (timm models), else its first convolution's, else 3."""
    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int) and not isinstance(chans, bool):
        return chans
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def output_difference(reference: Tensor, other: Tensor) -> tuple[float, float]:
    """Largest absolute difference of ``other`` from ``reference``, and that as a fraction of ``reference``'s
    scale (its largest absolute value)."""
    reference, other = reference.float().cpu(), other.float().cpu()
    largest = (reference - other).abs().max().item()
    return largest, largest / max(reference.abs().max().item(), 1e-12)


def relative_difference(reference: Tensor, other: Tensor) -> float:
    """:func:`output_difference` as a fraction of the reference's scale."""
    return output_difference(reference, other)[1]


def tolerance(dtype: str, device: torch.device) -> float:
    """How far a runner's output may be from eager fp32, as a fraction of the output's scale."""
    if dtype != "fp32":
        return HALF_RTOL
    return TF32_RTOL if device.type == "cuda" else FP32_RTOL


class _Autocast(nn.Module):
    """``module`` run under autocast to ``dtype`` (the GPU's mixed precision)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.module(x)


def _uses_autocast(dtype: str, device: torch.device) -> bool:
    return device.type == "cuda" and dtype != "fp32"


def torch_module(model: nn.Module, dtype: str, device: torch.device, form: str) -> nn.Module:
    """The module the torch runtimes call: deploy form (channels-last weights, except fp32 on a GPU: NCHW
    as the GPU protocol) or an eval copy of the training form; bf16 weights on the CPU, autocast on a GPU."""
    if form == "train":
        module = copy.deepcopy(model).eval().requires_grad_(False)
    else:
        module = deploy(model, channels_last=not (device.type == "cuda" and dtype == "fp32"))
    module = module.to(device)
    if _uses_autocast(dtype, device):
        return _Autocast(module, TORCH_DTYPES[dtype])
    return module.to(TORCH_DTYPES[dtype])


def torch_prepare(dtype: str, device: torch.device) -> Forward:
    """Input conversion of the torch runtimes: to the device, to bf16 with bf16 weights, channels-last under
    the GPU's autocast."""
    cast = torch.float32 if _uses_autocast(dtype, device) else TORCH_DTYPES[dtype]
    channels_last = _uses_autocast(dtype, device)

    def prepare(x: Tensor) -> Tensor:
        x = x.to(device=device, dtype=cast)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return prepare


def _inference(module: Callable[[Tensor], Tensor]) -> Forward:
    def forward(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x).float()
    return forward


def _build_eager(model, dtype, example, threads, device, form):
    return _inference(torch_module(model, dtype, device, form)), torch_prepare(dtype, device)


def _build_compile(model, dtype, example, threads, device, form):
    """``torch.compile`` (inductor, static shapes); it compiles on the first call, which
    :func:`make_runner` makes under :func:`_compile_settings`. One eager call first puts caches a model
    fills on its first forward (PATNet's attention bias) in their steady state, so the compiled graph is
    the one every later call runs, not one that recompiles on the second call."""
    module, prepare = torch_module(model, dtype, device, form), torch_prepare(dtype, device)
    _inference(module)(prepare(example))
    return _inference(torch.compile(module, dynamic=False)), prepare


@contextlib.contextmanager
def _compile_settings(dtype: str, device: torch.device):
    """Inductor's weight freezing on, and an error instead of a silent eager fallback when dynamo's
    recompile limit is hit (every model instance compiles its own frozen graph).

    On a CPU the graph's wrapper is C++ (``cpp_wrapper``), not Python: the calls between kernels cost less,
    which counts at batch 1, where a PATNet graph makes hundreds of them. A/B on an AMD EPYC, one thread, in
    one process: patnet_t0 fp32 0.89 of the Python wrapper's time, fasternet_t0 0.94; bf16 patnet_t2 0.91,
    fasternet_t2 0.95; 3-10 s more startup.

    bf16 on a CPU also autotunes the matrix products, with inductor's C++ GEMM template (AMX micro-kernels)
    among the choices, quietly: measured on a Xeon with AMX, one thread, compiled patnet_t2 went from 0.96 to
    0.88 of FasterNet-T2 and T0 from 1.03 to 0.95, for 40-50 s more startup; in fp32 it gained nothing. Convs
    are not autotuned, so a model whose 1x1 maps are convs (timm's FasterNet) runs as before.
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    tuned = {"cpp_wrapper": True} if device.type == "cpu" else {}
    if dtype == "bf16" and device.type == "cpu":
        tuned.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN", autotune_num_choices_displayed=0,
                     max_autotune_report_choices_stats=False)
    with inductor_config.patch(freezing=True, **tuned), dynamo_config.patch(
            recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        yield


def _check_no_recompile(runner: Runner, example: Tensor) -> None:
    """A second call must run the graph the first call compiled (timings must not include compiling, nor a
    graph compiled without freezing)."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(error_on_recompile=True):
        runner(example)


def _builder(runtime: str):
    if runtime == "eager":
        return _build_eager
    if runtime == "compile":
        return _build_compile
    from . import external
    return external.build_onnxruntime if runtime == "onnxruntime" else external.build_openvino


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _check_request(model, runtime: str, dtype: str, example, form: str) -> None:
    _check_choice("runtime", runtime, RUNTIMES)
    _check_choice("dtype", dtype, GPU_DTYPES)
    _check_choice("form", form, FORMS)
    if form == "train" and runtime != "eager":
        raise InvalidValueError(f"the {runtime} runtime runs the deploy form only; use form 'deploy', or the eager "
                                "runtime for the training form")
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"make_runner takes an nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() != 4 or not example.is_floating_point():
        raise InvalidValueError("the example must be a floating-point (batch, channels, height, width) tensor, got "
                                f"{getattr(example, 'shape', type(example).__name__)}")


def _verify(runner: Runner, model: nn.Module, example: Tensor, output: Tensor) -> None:
    """Compare the runner's first output with eager fp32 on the deploy form; raise when it is off."""
    if runner.form == "train" or (runner.runtime == "eager" and runner.dtype == "fp32"):
        return
    reference = _inference(torch_module(model, "fp32", runner.device, "deploy"))
    runner.relative_diff = relative_difference(reference(example.to(runner.device, torch.float32)), output)
    allowed = tolerance(runner.dtype, runner.device)
    if runner.relative_diff > allowed:
        raise OutputMismatchError(f"{runner.runtime} {runner.dtype} output differs from eager fp32 by "
                                  f"{runner.relative_diff:.2e} of its scale (allowed {allowed:.0e}) on "
                                  f"{runner.device}: this runtime computes this model wrongly here")


def make_runner(model: nn.Module, runtime: str, dtype: str, example: Tensor, threads: int | None = 1,
                device: str | torch.device = "cpu", *, form: str = "deploy") -> Runner:
    """The fastest callable we know for ``model`` in ``runtime`` (:data:`RUNTIMES`) and ``dtype``
    (:data:`DTYPES`; ``fp16`` on a GPU), for inputs shaped like ``example``, on ``threads`` threads.

    ``form`` 'train' (eager only) runs the unfolded eval model. The runner is called on ``example`` before
    it is returned (``torch.compile`` compiles then, and a second call must not recompile) and its output
    checked against eager fp32: :class:`OutputMismatchError` when it is off. bf16 only where native
    (:func:`check_native_bf16`).
    """
    _check_request(model, runtime, dtype, example, form)
    device = resolve_device(device)
    if threads is not None:
        check_threads(threads)
    reason = unsupported_reason(runtime, dtype, device)
    if reason is not None:
        raise InvalidValueError(reason)
    if dtype == "bf16":
        check_native_bf16(device)
    start = time.perf_counter()
    with num_threads(threads):
        forward, prepare = _builder(runtime)(model, dtype, example, threads, device, form)
    runner = Runner(forward, prepare, runtime=runtime, dtype=dtype, device=device, threads=threads, form=form,
                    input_shape=tuple(example.shape))
    runner.build_s = time.perf_counter() - start
    start = time.perf_counter()
    with _compile_settings(dtype, device) if runtime == "compile" else contextlib.nullcontext():
        output = runner(example)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    runner.first_call_s = time.perf_counter() - start
    if runtime == "compile":
        _check_no_recompile(runner, example)
    with num_threads(threads):
        _verify(runner, model, example, output)
    return runner
