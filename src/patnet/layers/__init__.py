"""PATNet building blocks."""
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
