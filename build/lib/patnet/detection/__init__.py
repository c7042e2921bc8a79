"""Detection and instance segmentation on PATNet (or any timm) backbones: torchvision's detectors with an FPN."""
from .models import ARCHS, TimmFpnBackbone, build_detector

__all__ = ["ARCHS", "TimmFpnBackbone", "build_detector"]
