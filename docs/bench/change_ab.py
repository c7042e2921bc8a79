"""One-process A/B of a change to the deploy form or its exported graph, in any runtime of the regime matrix.

A = the alternative: an emulation of the code before a shipped change, or a candidate measured and not kept;
B = the shipped code; F = FasterNet. Each is a runner from ``patnet.runtimes.make_runner`` (as in
``bench_regimes.py``), built and called with its code in force (compiled graphs are traced, and exports
written, under it); batch 1, 20 warm-up + 400 (or CALLS) timed calls each in rotating 5-call rounds; ratios are medians
of per-round ratios, with the 10th-90th percentiles of B / A. Changes (what A is):

  gate           before: PAT_ch's eager gate slices the whole (C, 2C) matrix and transposes it on every call
  residual       before: the MLP's residual is added as (B*H*W, C) rows, not on the output's map view
  compiled-gate  before: under torch.compile the gate's multiply-and-sum reduces over the outer axis of W and
                 reads it as an fp32 constant (freezing folds W.float())
  export-gate    candidate, not kept: the exported gate with ONNX ReduceL2 for the std (1 / sqrt(n - 1) folded
                 into the weight) and a 4-D 1x1 conv, 99 nodes fewer in patnet_t0 (502 -> 403)
  pool-stats     candidate, not kept: the exported gate's mean and variance as GlobalAveragePool, not ReduceMean
  expand-conv    candidate, not kept: compiled bf16 runs the MLP's expand as a oneDNN 1x1 conv (GELU fused there)
  onednn-gelu    candidate, not kept: compiled bf16 GELU MLPs call oneDNN's linear with GELU fused for the expand
  explicit-attn  candidate, not kept: attention as matmul, softmax, matmul instead of fused SDPA (PyTorch's form)
  bf16-convs     candidate: compiled bf16 takes the exported graph's conv form (MLP products as oneDNN 1x1
                 convs, attention channels-first) as compiled fp32 does where MKL is slow
  unpacked-convs before: eager partial 3x3 convs through F.conv2d, not oneDNN's conv with a packed weight
  gate-nodes     before: the exported gate multiplies the variance by n / (n - 1) (now sqrt of it is in the
                 weight's std rows) and unsqueezes the scale twice (now one Reshape): 12 -> 10 nodes a gate
  untouched-gate candidate, not kept: the exported gate multiplies only the gated channels' statistics by their
                 (2(C - passed), C - passed) matrix (56% of the whole one's bytes) and pads the scale with ones
  gate-sum       candidate, not kept: the exported gate's product as a multiply and a ReduceSum (the compiled
                 form) instead of a Gemm, which OpenVINO runs as a FullyConnected node per gate
  weight-first   candidate, not kept: the exported gate's product as MatMul(W^T, stats) on (B, 2C, 1) statistics,
                 the constant first (meant to leave OpenVINO a MatMul, not a FullyConnected; no Flatten before the
                 scale; which node OpenVINO made of it was not checked)
  conv-spatial   before: eager PAT_sp's one-channel spatial gate as F.conv2d, not a matrix-vector product of rows
  into-output    candidate, not kept: eager PAT_ch writes the conv and the scaled untouched channels into one
                 output (torch.mul(..., out=slice)) instead of scaling into a new map and concatenating
  gate-clip      candidate, not kept: the exported PAT_ch gate's hardsigmoid folded into its product (W / 6,
                 b / 6 + 1/2) and a Clip to [0, 1] (OpenVINO fuses the Clip, ONNX Runtime only a HardSigmoid)
  hardsigmoid    before: OpenVINO runs the exported HardSigmoid nodes as they are, not as Clamps it fuses
  spatial-outer  candidate: the exported PAT_sp gate's factor s * k + p as one 1 -> C conv of s (weight k, bias p)
  spatial-split  candidate: the exported PAT_sp gate on the attended channels only: [A * s * k + t, B]
  ln-op          before: PAT_sf's exported LayerNorm decomposed into seven nodes (mean, centring, square, mean,
                 epsilon, root, scale), not one LayerNormalization between two Transposes (which the openvino
                 runtime now reads as one MVN over the channels)
  spatial-max    candidate, not kept: the exported PAT_sp with its BN scale folded into the project rows, its
                 gate conv composed onto the hidden map (2C -> 1) and the factor as Max(s, p): two whole-map
                 nodes fewer
  packed-fp32-convs candidate, not kept: eager fp32 partial 3x3 convs in oneDNN with a packed weight on every
                 CPU (the rule sends them there only where MKL's GEMM is slow, i.e. AMD)
  few-rows       candidate, not kept: eager products also go to oneDNN from 4 rows against a matrix of 2^17
                 weights (the 64 px model's last-stage MLP products), not only from MIN_MACS multiply-adds
  small-gelu     before: eager GELU on the MLP's (B*H*W, C) rows whatever their size (ATen hands it to oneDNN),
                 not on their channels-last map view (ATen's own kernel) up to FusedMlp.small_activation elements
  mha-form       candidate, not kept: exported attention as softmax(QK^T + bias) V then a Transpose (the
                 MatMul -> Softmax -> MatMul form OpenVINO fuses into one MHA node in transformers; it did not here)
  keys-first     candidate, not kept: exported attention with keys first, V softmax_keys(K^T Q + bias^T), so the
                 second product needs no transposed operand
  no-autotune    compiled bf16 without inductor's GEMM autotuning (the settings compiled fp32 has)
  gate-conv      candidate, not kept: the exported gate's product as a 1x1 conv on the (B, 2C, 1, 1) statistics
                 (no Flatten before it, no Reshape after it: the scale keeps the map's 4-D layout)
  bmm-attn       candidate, not kept: PyTorch's attention as baddbmm (the bias added in the product), softmax and bmm in
                 the model's dtype (bf16 logits under bf16) instead of fused SDPA
  transposed-gelu candidate, not kept: small eager activations on the rows' transposed view (ATen's own
                 kernel, as on the channels-last map view, with two metadata calls instead of four)
  ln-stats       candidate, not kept: the exported gate's mean and std as one ONNX LayerNormalization's optional
                 Mean and InvStdDev outputs (epsilon 0) and a Reciprocal, 8 nodes a gate for 10
  cpp-gate       before: eager PAT_ch's gate and concatenation as about ten PyTorch operators, not one C++ call
                 (torch.ops.patnet.gated_concat); "gate" and "into-output" run the PyTorch form as A, so their
                 B / A now includes this call
  choices        before: eager inference asks every path rule (C++ call, oneDNN or ATen, convs or rows) on every
                 call instead of remembering its answers per input signature (fused._RemembersChoices); A runs
                 fused.py's methods from commit 019c0c2 (CODE_BEFORE)
  small-attn     before: PAT_sf's attention as fused SDPA on the heads' views, not one C++ call on the qkv rows
                 (torch.ops.patnet.small_attention; eager and compiled CPU inference); "explicit-attn" and
                 "bmm-attn" replace the token form as A, so their B / A now includes this call
  bf16-dot-conv  before: the partial mixers' bf16 3x3 convs in oneDNN (eager, packed weight) or inductor's oneDNN
                 conv (compiled), not one C++ call on AVX512-BF16 dot products (torch.ops.patnet.partial_conv3x3)
  bf16-dot-linear before: the bf16 MLP and PAT_sf products as oneDNN linears (eager: packed weight; compiled:
                 inductor's) or torch.addmm, not one C++ call each on AVX512-BF16 dot products
                 (torch.ops.patnet.bf16_linear, activation and residual applied as it writes)
  products-threshold before: bf16 products over 2^23 multiply-adds in oneDNN, not the C++ call (the rule until the
                 kernels' weights were packed in panels of 64 outputs)
  compiled-cpp-gate before: under torch.compile PAT_ch's statistics, gate and concatenation as inductor's
                 kernels, not one C++ call (torch.ops.patnet.gated_concat, as eager inference has it)
  unit-gates     not a change: A is PATNet with every PAT_ch gate's scale 1 (statistics and product skipped, in
                 the PyTorch form), so B / A is what the gates cost; the outputs differ
  no-attn        not a change: A is PATNet with PAT_sf's attention replaced by its values (V: SDPA patched, the C++
                 call off), so B / A is what the attention kernel costs (its products, softmax, buffers); the
                 outputs differ
  pconv-floor    not a change: A is the same variant with PConv in every stage (no gates, no attention), the
                 floor a fused PAT block can approach (its B / A is PATNet's time over that floor's)
  pconv-last     not a change: A is the same variant with PConv instead of PAT_sf in the last stage (B / A is
                 what the attention costs)
  no-spatial     not a change: A is the same variant without PAT_sp (patnet_t1 has it; B / A is what it costs)

    .venv/bin/python docs/bench/change_ab.py CHANGE RUNTIME DTYPE THREADS {64|patnet_t0|patnet_t2|...} [CALLS]
"""
import math
import os
import subprocess
import sys
import types

import timm
import torch
import torch.nn.functional as F

import patnet  # noqa: F401
from patnet.bench.timing import summarise, time_alternating
from patnet.deploy import deploy
from patnet.layers import cpu_kernels, fused, onednn
from patnet.layers import stats as stats_module
from patnet.layers.stats import spatial_mean_std, stacked_mean_std
from patnet.models import baseline_partner
from patnet.runtimes import make_runner, ov_passes
from patnet.runtimes import runner as runtime_runner


def unbiased_rows(x):
    """``(B, 2C)`` rows ``[mean, unbiased std]`` as the exported gate took them before the 10-node form."""
    return torch.cat(spatial_mean_std(x), dim=1).flatten(1)


def gate_before(self, x):
    if "_before" not in self.__dict__:
        weight, bias = self.whole()
        self.__dict__["_before"] = (torch.nn.Parameter(weight.t().contiguous(), requires_grad=False),
                                    torch.nn.Parameter(bias, requires_grad=False))
    weight, bias = self.__dict__["_before"]
    stats = stacked_mean_std(x)
    return F.hardsigmoid(torch.addmm(bias[self.passed:], stats, weight[self.passed:].t()))[:, :, None, None]


def residual_before(self, x, residual):
    batch, channels, height, width = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    residual_rows = None if residual is None else residual.permute(0, 2, 3, 1).reshape(rows.shape)
    hidden = self.act(torch.addmm(self.expand_bias, rows, self.expand_weight))
    out = torch.addmm(self.project_bias, hidden, self.project_weight)
    if residual_rows is not None:
        out = out.add_(residual_rows)
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2)


def summed_products_before(a, b, dim, keepdim=False):
    return (a.float() * b.float()).sum(dim=dim, keepdim=keepdim)


def compiled_gate_before(self, stats):
    channels = self.weight.shape[0] // 2
    matrix = torch.cat((self.weight[self.passed:channels], self.weight[channels + self.passed:]), dim=0)
    return summed_products_before(stats[:, :, None], matrix, dim=1) + self.bias.float()


def export_gate_candidate(self, x):
    mean = x.mean(dim=(2, 3), keepdim=True)
    norm = torch.linalg.vector_norm(x - mean, dim=(2, 3), keepdim=True)
    weight, bias = self.whole()
    channels = weight.shape[1]
    rows = torch.cat((weight[:channels], weight[channels:] / math.sqrt(max(x.shape[2] * x.shape[3] - 1, 1))))
    return F.hardsigmoid(F.conv2d(torch.cat((mean, norm), dim=1), fused._as_conv_weight(rows), bias))


def pool_stats_candidate(self, x):
    mean = F.adaptive_avg_pool2d(x, 1)
    count = x.shape[2] * x.shape[3]
    variance = F.adaptive_avg_pool2d((x - mean).square(), 1)
    stats = torch.cat((mean, torch.sqrt(variance * (count / max(count - 1, 1)))), dim=1).flatten(1)
    weight, bias = self.whole()
    return F.hardsigmoid(torch.addmm(bias, stats, weight))[:, :, None, None]


SHIPPED_ON_ROWS = fused.FusedMlp._on_rows


def _rows_then_project(self, hidden, shape, residual):
    batch, _, height, width = shape
    out = torch.addmm(self.project_bias, hidden, self.project_weight).view(batch, height, width, -1)
    out = out.permute(0, 3, 1, 2)
    return out if residual is None else out + residual


def expand_conv_candidate(self, x, residual):
    if not (fused._compiling() and x.dtype == torch.bfloat16):
        return SHIPPED_ON_ROWS(self, x, residual)
    hidden = self.act(F.conv2d(x, fused._as_conv_weight(self.expand_weight), self.expand_bias))
    return _rows_then_project(self, hidden.permute(0, 2, 3, 1).flatten(0, 2), x.shape, residual)


def onednn_gelu_candidate(self, x, residual):
    if not (fused._compiling() and x.dtype == torch.bfloat16 and isinstance(self.act, torch.nn.GELU)):
        return SHIPPED_ON_ROWS(self, x, residual)
    rows = x.permute(0, 2, 3, 1).flatten(0, 2)
    hidden = torch.ops.mkldnn._linear_pointwise(rows, self.expand_weight.t().contiguous(), self.expand_bias,
                                                "gelu", [], "none")
    return _rows_then_project(self, hidden, x.shape, residual)


def attention_on_tokens(self, untouched, heads):
    """The shipped token attention's LayerNorm, qkv and proj around ``heads(qkv, bias)``, which takes the
    ``(B, H*W, 3, heads, head_dim)`` view of qkv and returns ``(B, heads, H*W, head_dim)`` attended values."""
    batch, _, height, width = untouched.shape
    length = height * width
    tokens = F.layer_norm(untouched.flatten(2).transpose(1, 2), (self.untouched_dim,), eps=self.eps)
    qkv = self._product(tokens.reshape(batch * length, self.untouched_dim), self.qkv_weight, self.qkv_bias)
    out = heads(qkv.view(batch, length, 3, self.num_heads, self.head_dim), self.attention_bias(height, width))
    out = self._product(out.transpose(1, 2).reshape(batch * length, self.untouched_dim), self.proj_weight,
                        self.proj_bias)
    return out.view(batch, length, self.untouched_dim).transpose(1, 2).reshape(batch, self.untouched_dim, height, width)


def explicit_heads(qkv, bias):
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = torch.matmul(q, k.transpose(-1, -2)).float() + bias.float()
    return torch.matmul(logits.softmax(-1).to(v.dtype), v)


def bmm_heads(qkv, bias):
    batch, length, _, heads, head_dim = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * heads, length, head_dim).unbind(0)
    bias = bias.expand(batch, heads, length, length).reshape(-1, length, length)
    return torch.bmm(torch.baddbmm(bias, q, k.transpose(1, 2)).softmax(-1), v).view(batch, heads, length, head_dim)


def transposed_gelu_candidate(self, hidden, *_):
    if hidden.numel() > self.small_activation:
        return self.act(hidden)
    return self.act(hidden.t()).t()


def gate_nodes_before(self, x):
    stats = unbiased_rows(x)
    weight, bias = self.whole()
    return fused._gate_scale(stats, weight, bias)[:, :, None, None]


def untouched_gate_candidate(self, x):
    mean, std = spatial_mean_std(x)
    stats = torch.cat((mean[:, self.passed:], std[:, self.passed:]), dim=1).flatten(1)
    scale = fused._gate_scale(stats, self.untouched_matrix(), self.bias)
    return F.pad(scale, (self.passed, 0), value=1.0)[:, :, None, None]


def gate_sum_candidate(self, x):
    weight, bias = self.whole()
    stats = unbiased_rows(x)
    return F.hardsigmoid((stats[:, :, None] * weight).sum(dim=1) + bias)[:, :, None, None]


def gate_moments(self, x):
    """The shipped exported gate's ``(W, b)`` and its ``(B, 2C, 1, 1)`` statistics ``[mean, biased std]``, before
    the Flatten (the weight's std rows carry ``sqrt(n / (n - 1))``)."""
    count = x.shape[2] * x.shape[3]
    weight, bias = self.whole(math.sqrt(stats_module.bessel_factor(count)))
    mean, variance = stats_module._mean_variance(x)
    return weight, bias, torch.cat((mean, variance.sqrt()), dim=1)


def weight_first_candidate(self, x):
    weight, bias, stats = gate_moments(self, x)
    stats = stats.flatten(2)
    return F.hardsigmoid(torch.matmul(weight.t(), stats) + bias[:, None]).unsqueeze(-1)


class LayerNormMoments(torch.autograd.Function):
    """A map's ``(B, C, 1, 1)`` mean and biased std over H and W; exported as one LayerNormalization over axes 2-3
    (its optional Mean and InvStdDev outputs, epsilon 0) and a Reciprocal."""

    @staticmethod
    def forward(ctx, x):
        mean, variance = stats_module._mean_variance(x)
        return mean, variance.sqrt()

    @staticmethod
    def symbolic(g, x):
        height, width = x.type().sizes()[2:]
        ones = g.op("Constant", value_t=torch.ones(height, width))
        _, mean, inverse_std = g.op("LayerNormalization", x, ones, axis_i=2, epsilon_f=0.0, outputs=3)
        return mean, g.op("Reciprocal", inverse_std)


def ln_stats_candidate(self, x):
    if not fused._exporting():
        return SHIPPED_CHANNEL_GATE(self, x)
    count = x.shape[2] * x.shape[3]
    weight, bias = self.whole(math.sqrt(stats_module.bessel_factor(count)))
    stats = torch.cat(LayerNormMoments.apply(x), dim=1).flatten(1)
    return fused._gate_scale(stats, weight, bias).reshape(-1, weight.shape[1], 1, 1)


def into_output_candidate(self, x):
    scale = self.gate.untouched_scale(x)
    out = torch.empty_like(x)
    out[:, :self.conv_dim] = self.partial_conv(x[:, :self.conv_dim])
    torch.mul(x[:, self.conv_dim:], scale, out=out[:, self.conv_dim:])
    return out


SHIPPED_CONVS_WHEN_COMPILED = fused._convs_when_compiled


SHIPPED_PARTIAL_CONV = fused._PartialMixer.partial_conv
SHIPPED_SPATIAL_GATE = fused.FusedSpatialGate.forward
SHIPPED_CHANNEL_GATE = fused.FusedChannelGate.forward


def gate_clip_candidate(self, x):
    if not fused._exporting():
        return SHIPPED_CHANNEL_GATE(self, x)
    weight, bias = self.whole()
    stats = unbiased_rows(x)
    return torch.clamp(torch.addmm(bias / 6 + 0.5, stats, weight / 6), 0.0, 1.0)[:, :, None, None]


def spatial_outer_candidate(self, x):
    if not fused._exporting():
        return SHIPPED_SPATIAL_GATE(self, x)
    spatial = F.hardsigmoid(F.conv2d(x, self.gate_weight))
    factor = F.conv2d(spatial, self.gated_scale.view(-1, 1, 1, 1), self.passed.view(-1))
    return torch.addcmul(self.shift, x, factor)


def spatial_split_candidate(self, x):
    if not fused._exporting():
        return SHIPPED_SPATIAL_GATE(self, x)
    gated = int((self.passed == 0).sum())
    spatial = F.hardsigmoid(F.conv2d(x, self.gate_weight))
    attended, passed = torch.split(x, [gated, x.shape[1] - gated], dim=1)
    scaled = torch.addcmul(self.shift[:, :gated], attended * spatial, self.gated_scale[:, :gated])
    return torch.cat((scaled, passed), dim=1)


def ln_op_before(self, untouched):
    centred = untouched - untouched.mean(dim=1, keepdim=True)
    return self._attend_normed(centred * torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + self.eps))


SHIPPED_MLP_FORWARD = fused.FusedMlp.forward


def spatial_max_candidate(self, x, residual=None):
    if not (fused._exporting() and self.spatially_gated):
        return SHIPPED_MLP_FORWARD(self, x, residual)
    gate = self.spatial_gate
    hidden = self.act(F.conv2d(x, fused._as_conv_weight(self.expand_weight), self.expand_bias))
    project, scale = self.project_weight.t(), (gate.gated_scale + gate.passed).view(-1)
    gate_row = gate.gate_weight.view(-1)
    out = F.conv2d(hidden, (project * scale[:, None])[:, :, None, None], self.project_bias * scale)
    spatial = F.hardsigmoid(F.conv2d(hidden, (gate_row @ project)[None, :, None, None],
                                     (gate_row @ self.project_bias)[None]))
    out = out * torch.maximum(spatial, gate.passed) + gate.shift
    return out if residual is None else residual + out


def unit_scale(self, x):
    return torch.ones_like(x[:, :, :1, :1])


def unit_untouched_scale(self, x):
    return torch.ones_like(x[:, self.passed:, :1, :1])


def packed_fp32_conv_candidate(self, convolved):
    fp32_rule = onednn.FP32_TAKES_ONEDNN
    onednn.FP32_TAKES_ONEDNN = True
    try:
        return SHIPPED_PARTIAL_CONV(self, convolved)
    finally:
        onednn.FP32_TAKES_ONEDNN = fp32_rule


def attention_with_heads(self, normed, heads):
    """The shipped exported attention's qkv and proj convs around ``heads(q, k, v, bias)``, which returns the
    ``(B, heads, head_dim, H*W)`` attended values from ``(B, heads, head_dim, H*W)`` q, k, v."""
    batch, _, height, width = normed.shape
    qkv = F.conv2d(normed, fused._as_conv_weight(self.qkv_weight), self.qkv_bias)
    q, k, v = qkv.reshape(batch, 3, self.num_heads, self.head_dim, height * width).unbind(1)
    out = heads(q, k, v, self.attention_bias(height, width))
    return F.conv2d(out.reshape(batch, self.untouched_dim, height, width), fused._as_conv_weight(self.proj_weight),
                    self.proj_bias)


def mha_heads(q, k, v, bias):
    logits = torch.matmul(q.transpose(-1, -2), k) + bias
    return torch.matmul(logits.softmax(dim=-1), v.transpose(-1, -2)).transpose(-1, -2)


def keys_first_heads(q, k, v, bias):
    logits = torch.matmul(k.transpose(-1, -2), q) + bias.transpose(-1, -2)
    return torch.matmul(v, logits.softmax(dim=-2))


def gate_conv_candidate(self, x):
    weight, bias, stats = gate_moments(self, x)
    return F.hardsigmoid(F.conv2d(stats, fused._as_conv_weight(weight), bias))


def no_autotune_candidate(dtype, device, settings=runtime_runner._compile_settings):
    return settings("fp32", device)


def bf16_convs_candidate(x, matrix):
    if fused._compiling() and x.dtype == torch.bfloat16:
        return x.shape[0] * x.shape[2] * x.shape[3] * matrix.shape[0] * matrix.shape[1] >= fused.MIN_MACS
    return SHIPPED_CONVS_WHEN_COMPILED(x, matrix)


SHIPPED_KERNEL_FITS = fused.FusedPartialChannelAttn._kernel_fits
SHIPPED_LINEAR_FITS = fused._linear_fits_kernel


def products_threshold_before(rows, matrix, bias):
    return rows.shape[0] * matrix.shape[0] * matrix.shape[1] <= 2 ** 23 and SHIPPED_LINEAR_FITS(rows, matrix, bias)


def few_rows_candidate(rows, matrix):
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or not onednn.HAS_KERNEL:
        return False
    weights = matrix.shape[0] * matrix.shape[1]
    if rows.shape[0] * weights < onednn.MIN_MACS and (rows.shape[0] < 4 or weights < 2 ** 17):
        return False
    return onednn._onednn_inference(rows, matrix)


CHANGES = {
    "gate": [(cpu_kernels, "ENABLED", False), (fused.FusedChannelGate, "untouched_scale", gate_before)],
    "residual": [(fused.FusedMlp, "_on_rows", residual_before)],
    "compiled-gate": [(fused.FusedChannelGate, "_products_summed", compiled_gate_before),
                      (fused, "_summed_products", summed_products_before)],
    "export-gate": [(fused.FusedChannelGate, "forward", export_gate_candidate)],
    "pool-stats": [(fused.FusedChannelGate, "forward", pool_stats_candidate)],
    "expand-conv": [(fused.FusedMlp, "_on_rows", expand_conv_candidate)],
    "onednn-gelu": [(fused.FusedMlp, "_on_rows", onednn_gelu_candidate)],
    "explicit-attn": [(fused.FusedPartialSelfAttn, "_attend_tokens",
                       lambda self, untouched: attention_on_tokens(self, untouched, explicit_heads))],
    "bf16-convs": [(fused, "_convs_when_compiled", bf16_convs_candidate)],
    "gate-nodes": [(fused.FusedChannelGate, "forward", gate_nodes_before)],
    "untouched-gate": [(fused.FusedChannelGate, "forward", untouched_gate_candidate)],
    "gate-sum": [(fused.FusedChannelGate, "forward", gate_sum_candidate)],
    "weight-first": [(fused.FusedChannelGate, "forward", weight_first_candidate)],
    "conv-spatial": [(fused.FusedSpatialGate, "_rows_product", lambda self, x: F.conv2d(x, self.gate_weight))],
    "into-output": [(fused.FusedPartialChannelAttn, "forward", into_output_candidate)],
    "gate-clip": [(fused.FusedChannelGate, "forward", gate_clip_candidate)],
    "hardsigmoid": [(ov_passes, "hardsigmoids_as_clamps", lambda model: model)],
    "spatial-outer": [(fused.FusedSpatialGate, "forward", spatial_outer_candidate)],
    "spatial-split": [(fused.FusedSpatialGate, "forward", spatial_split_candidate)],
    "ln-op": [(fused.FusedPartialSelfAttn, "_attend_channels_first", ln_op_before)],
    "spatial-max": [(fused.FusedMlp, "forward", spatial_max_candidate)],
    "cpp-gate": [(cpu_kernels, "ENABLED", False)],
    "no-attn": [(F, "scaled_dot_product_attention", lambda q, k, v, attn_mask=None, scale=None: v * 1.0),
                (fused.FusedPartialSelfAttn, "_attention_in_kernel", lambda self, untouched: False)],
    "small-attn": [(fused.FusedPartialSelfAttn, "_attention_in_kernel", lambda self, untouched: False)],
    "unit-gates": [(cpu_kernels, "ENABLED", False), (fused.FusedChannelGate, "forward", unit_scale),
                   (fused.FusedChannelGate, "untouched_scale", unit_untouched_scale)],
    "packed-fp32-convs": [(fused._PartialMixer, "partial_conv", packed_fp32_conv_candidate)],
    "small-gelu": [(fused.FusedMlp, "_activated", lambda self, hidden, *_: self.act(hidden))],
    "mha-form": [(fused.FusedPartialSelfAttn, "_attend_normed",
                  lambda self, normed: attention_with_heads(self, normed, mha_heads))],
    "keys-first": [(fused.FusedPartialSelfAttn, "_attend_normed",
                    lambda self, normed: attention_with_heads(self, normed, keys_first_heads))],
    "no-autotune": [(runtime_runner, "_compile_settings", no_autotune_candidate)],
    "unpacked-convs": [(fused._PartialMixer, "partial_conv", lambda self, convolved: self.conv(convolved))],
    "few-rows": [(fused, "takes_onednn", few_rows_candidate)],
    "ln-stats": [(fused.FusedChannelGate, "forward", ln_stats_candidate)],
    "gate-conv": [(fused.FusedChannelGate, "forward", gate_conv_candidate)],
    "bmm-attn": [(fused.FusedPartialSelfAttn, "_attend_tokens",
                  lambda self, untouched: attention_on_tokens(self, untouched, bmm_heads))],
    "transposed-gelu": [(fused.FusedMlp, "_activated", transposed_gelu_candidate)],
    "bf16-dot-conv": [(fused, "_conv_fits_kernel", lambda x, conv: False)],
    "bf16-dot-linear": [(fused, "_linear_fits_kernel", lambda rows, matrix, bias: False)],
    "products-threshold": [(fused, "_linear_fits_kernel", products_threshold_before)],
    "compiled-cpp-gate": [(fused.FusedPartialChannelAttn, "_kernel_fits",
                           lambda self, x: not fused._compiling() and SHIPPED_KERNEL_FITS(self, x))],
}


CODE_BEFORE = {  # A runs the deployed blocks' methods as fused.py had them at this commit (same attributes)
    "choices": "019c0c2",
}


def fused_blocks_at(commit: str, model):
    """``model``'s deploy form whose fused blocks run the methods of ``src/patnet/layers/fused.py`` at ``commit``
    (its classes swapped in; their attributes are the same)."""
    source = subprocess.run(["git", "show", f"{commit}:src/patnet/layers/fused.py"], check=True,
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    before = types.ModuleType(f"{fused.__name__}_at_{commit}")
    before.__package__ = fused.__package__
    exec(compile(source, f"fused.py@{commit}", "exec"), before.__dict__)
    deployed = deploy(model)
    for module in deployed.modules():
        if type(module).__module__ == fused.__name__:
            module.__class__ = getattr(before, type(module).__name__)
    return deployed


OTHER_MODELS = {  # A is another model; no patches
    "pconv-floor": {"mixers": ("pconv",) * 4},
    "pconv-last": {"mixers": ("pat_ch",) * 3 + ("pconv",)},
    "no-spatial": {"spatial_attn": False},
}


def under(patches, work):
    """``work`` as a callable that runs with each ``(owner, attribute, value)`` of ``patches`` in force."""
    def call():
        kept = [getattr(owner, name) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        try:
            return work()
        finally:
            for (owner, name, _), value in zip(patches, kept):
                setattr(owner, name, value)
    return call


def main() -> None:
    change, runtime, dtype, threads, case = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    calls = int(sys.argv[6]) if len(sys.argv) > 6 else 400
    torch.set_num_threads(threads)
    size, chans, classes, name = (64, 1, 10, "patnet_t0") if case == "64" else (224, 3, 1000, case)
    if change not in CHANGES and change not in OTHER_MODELS and change not in CODE_BEFORE:
        sys.exit(f"unknown change {change!r}; choose one of {sorted([*CHANGES, *OTHER_MODELS, *CODE_BEFORE])}")
    model = timm.create_model(name, num_classes=classes, in_chans=chans).eval()
    built = {"A": model, "B": model}
    if change in OTHER_MODELS:
        built["A"] = timm.create_model(name, num_classes=classes, in_chans=chans, **OTHER_MODELS[change]).eval()
    if change in CODE_BEFORE:
        built["A"] = fused_blocks_at(CODE_BEFORE[change], model)
    partner = timm.create_model(baseline_partner(name), num_classes=classes, in_chans=chans).eval()
    x = torch.randn(1, chans, size, size)
    codes = {"A": CHANGES.get(change, []), "B": []}
    runners = {key: under(patches, lambda: make_runner(built[key], runtime, dtype, x, threads))()
               for key, patches in codes.items()}
    runners["F"] = make_runner(partner, runtime, dtype, x, threads)
    ready = runners["F"].prepare(x)
    runs = {key: under(codes.get(key, []), lambda runner=runner: runner(ready)) for key, runner in runners.items()}
    with torch.inference_mode():
        diff = math.nan if change in OTHER_MODELS else (runs["A"]() - runs["B"]()).abs().max().item()
        times = time_alternating(runs, iters=calls, warmup=20, per_round=5)
    stats, against = summarise(times, {"A": "F", "B": "F"})
    _, new_old = summarise(times, {"B": "A"})
    ms = " | ".join(f"{stats[k].median_ms:.3f}" for k in "ABF")
    ratio = new_old["B"]
    print(f"| {name} | {size} | {runtime} {dtype} | {threads} | {ms} | {against['A'].median:.3f} | "
          f"{against['B'].median:.3f} | {ratio.median:.3f} ({ratio.p10:.3f}-{ratio.p90:.3f}) | {diff:.1e} |")


if __name__ == "__main__":
    main()
