"""patnet: PATNet (Partial visual ATtention) backbones for timm.

``import patnet`` registers ``patnet_t0 ... patnet_l`` with timm; build them with ``timm.create_model``
(or ``patnet.create_model``, which suggests close names for a typo).
"""
from .models import PATNet, checkpoint_filter_fn, create_model

__all__ = ["PATNet", "checkpoint_filter_fn", "create_model"]

__version__ = "0.1.0"
