"""PATNet building blocks: the training forms (``partial``), their deployment forms (``fused``), the
statistics both use (``stats``), folding helpers (``folding``) and the relative position bias (``rel_pos``)."""
from .partial import (
    GaussianChannelGate,
    PartialChannelAttn,
    PartialConv,
    PartialSelfAttn,
    PartialSpatialAttn,
    RelPosSelfAttention,
    split_channels,
)
from .rel_pos import RelPosBias, euclidean_bucket_index

__all__ = ["GaussianChannelGate", "PartialChannelAttn", "PartialConv", "PartialSelfAttn", "PartialSpatialAttn",
           "RelPosBias", "RelPosSelfAttention", "euclidean_bucket_index", "split_channels"]
