"""PATNet model family (registered with timm on import) and the project's one model factory."""
from .factory import baseline_partner, check_model_name, create_model, patnet_variants, size_key
from .patnet import PATNet, checkpoint_filter_fn

__all__ = ["PATNet", "baseline_partner", "check_model_name", "checkpoint_filter_fn", "create_model", "patnet_variants",
           "size_key"]
