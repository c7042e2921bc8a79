"""PATNet model family (registered with timm on import)."""
from .factory import check_model_name, create_model
from .patnet import PATNet, checkpoint_filter_fn
