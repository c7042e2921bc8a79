"""``patnet export``: a model's deployment form as ONNX or TorchScript, verified against PyTorch."""
from __future__ import annotations

import argparse

from ..export import OPSET, export_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="timm model name, e.g. patnet_t2 (optional with a `patnet train` "
                        "checkpoint, which names its model; if given it must match)")
    parser.add_argument("--output", required=True, help="FILE.onnx (ONNX), FILE.xml (OpenVINO IR, with its .bin) "
                        "or FILE.pt/.ts (TorchScript)")
    parser.add_argument("--checkpoint", default=None, help="weights to load: a `patnet train` run folder, its "
                        "best/ or last/ checkpoint, or a plain state dict / safetensors file")
    parser.add_argument("--img-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--in-chans", type=int, default=None,
                        help="input channels (default: the checkpoint's, else the model's; may not contradict the "
                        "checkpoint)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: the checkpoint's, else the model's; may not contradict the "
                        "checkpoint); 0 exports the pooled features without the classifier")
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: let the batch dimension vary")


def run(args: argparse.Namespace) -> int:
    report = export_model(args.model, args.output, args.checkpoint, tuple(args.img_size), args.in_chans,
                          args.num_classes, args.dynamic_batch)
    if report.fmt == "onnx":
        print(f"wrote {report.path} (ONNX opset {OPSET}); onnxruntime vs PyTorch: max |diff| "
              f"{report.max_abs_diff:.2e}, {report.relative_diff:.2e} of the output's scale")
    elif report.fmt == "openvino":
        print(f"wrote {report.path} and {report.path.with_suffix('.bin')} (OpenVINO IR); OpenVINO f32 vs PyTorch: "
              f"{report.relative_diff:.2e} of the output's scale")
    else:
        print(f"wrote {report.path} (TorchScript); reloaded vs PyTorch: max |diff| {report.max_abs_diff:.2e}")
    return 0
