"""The rewrites the openvino runtime applies to an exported ONNX file as it reads it (and the IR export writes):
the same functions in the forms OpenVINO's CPU plugin runs fastest."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np


def _opset():
    return importlib.import_module("openvino.opset13")


def hardsigmoids_as_clamps(model):
    """``model`` (an OpenVINO model) with each ``HardSigmoid(x, alpha, beta)`` replaced, in place, by the same
    function as ``Clamp(x * alpha + beta, 0, 1)``. OpenVINO's CPU plugin runs a HardSigmoid as a reference kernel
    of its own, between layout reorders, where it fuses the multiply, add and clamp into the FullyConnected or
    Convolution before them: PATNet's gates lose a node and two reorders each (patnet_t0 in bf16: 11 HardSigmoid
    and 22 of 95 reorders). One process on an AMD EPYC Zen 5, OpenVINO bf16, time with / without on one / two
    threads (docs/bench/change-ab.md): patnet_t0 0.967 / 0.964, at 64 px 0.959 / 0.959, patnet_t1 (PAT_sp's
    gates too) 0.956 / 0.962, patnet_t2 0.987 / 0.995, patnet_s 0.992 (one); f32 0.96-1.02 (the spread). ONNX
    files keep the HardSigmoid, which ONNX Runtime fuses into the product (a Clip it would run as a node of its
    own)."""
    ops = _opset()
    for node in model.get_ordered_ops():
        if node.get_type_name() == "HardSigmoid":
            x, alpha, beta = (node.input_value(i) for i in range(3))
            node.output(0).replace(ops.clamp(ops.add(ops.multiply(x, alpha), beta), 0.0, 1.0).output(0))
    return model


def _consumer_chain(node, length: int) -> list:
    """``node`` and the nodes after it while each has exactly one consumer, up to ``length`` nodes."""
    chain = [node]
    while len(chain) < length:
        targets = list(chain[-1].output(0).get_target_inputs())
        if len(targets) != 1:
            break
        chain.append(targets[0].get_node())
    return chain


def _permutation(transpose) -> list[int] | None:
    """A Transpose node's constant permutation (None when it is not a constant)."""
    order = transpose.input_value(1).get_node()
    return order.get_vector().tolist() if order.get_type_name() == "Constant" else None


def _constant_axes(node) -> list[int] | None:
    """The axes a Constant or a Range of Constants (how OpenVINO reads LayerNormalization's axis) holds."""
    if node.get_type_name() == "Constant":
        return node.get_vector().tolist()
    inputs = [node.input_value(i).get_node() for i in range(node.get_input_size())]
    if node.get_type_name() != "Range" or any(n.get_type_name() != "Constant" for n in inputs):
        return None
    start, stop, step = (int(n.get_vector()[0]) for n in inputs)
    return list(range(start, stop, step))


def _channel_layernorm(mvn):
    """``(transpose_in, multiply, add, transpose_out)`` when ``mvn`` is the middle of ONNX LayerNormalization over
    the channels of a ``(B, C, H, W)`` map as the export writes it: Transpose to ``(B, H, W, C)``, MVN over the
    last axis, the affine Multiply and Add, Transpose back; else None."""
    first = mvn.input_value(0).get_node()
    chain = _consumer_chain(mvn, 4)
    if first.get_type_name() != "Transpose" or [n.get_type_name() for n in chain] != [
            "MVN", "Multiply", "Add", "Transpose"]:
        return None
    if _constant_axes(mvn.input_value(1).get_node()) not in ([3], [-1]):
        return None
    if _permutation(first) != [0, 2, 3, 1] or _permutation(chain[3]) != [0, 3, 1, 2]:
        return None
    if any(n.input_value(1).get_node().get_type_name() != "Constant" for n in chain[1:3]):
        return None
    return first, chain[1], chain[2], chain[3]


def layernorms_channels_first(model):
    """``model`` with each LayerNorm over a map's channels that the export writes between two Transposes
    (ONNX LayerNormalization, which ONNX Runtime runs as one kernel) rewritten, in place, as one MVN over axis 1
    of the untransposed map with the same epsilon and affine: no layout change, which OpenVINO would run as two
    reorders. Exact; MVN normalises over the same values."""
    ops = _opset()
    for node in model.get_ordered_ops():
        matched = node.get_type_name() == "MVN" and _channel_layernorm(node)
        if not matched:
            continue
        first, multiply, add, last = matched
        attributes = node.get_attributes()
        mvn = ops.mvn(first.input_value(0), ops.constant(np.array([1], dtype=np.int64)),
                      attributes["normalize_variance"], attributes["eps"], attributes["eps_mode"])
        scale, shift = (n.input_value(1).get_node().get_vector().reshape(1, -1, 1, 1) for n in (multiply, add))
        last.output(0).replace(ops.add(ops.multiply(mvn, ops.constant(scale)), ops.constant(shift)).output(0))
    return model


def rewritten(model):
    """``model`` with every rewrite of this module applied."""
    return layernorms_channels_first(hardsigmoids_as_clamps(model))


def read_openvino(core, onnx_path: str | Path):
    """An exported ONNX file's OpenVINO model as the openvino runtime compiles it (:func:`rewritten`)."""
    return rewritten(core.read_model(str(onnx_path)))
