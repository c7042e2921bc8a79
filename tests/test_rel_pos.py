"""The relative-position bucket index against the spec's formula, computed naively."""
import math

import pytest
import torch

from patnet.layers import RelPosBias, euclidean_bucket_index
from patnet.layers.rel_pos import SHAPES_KEPT


def naive_bucket(drow, dcol, alpha=20, beta=40, gamma=160):
    d = round(math.sqrt(drow * drow + dcol * dcol))
    if d <= alpha:
        idx = d
    else:
        idx = min(beta, round(alpha + math.log(d / alpha) / math.log(gamma / alpha) * (beta - alpha)))
    return idx + beta


@pytest.mark.parametrize("height,width", [(7, 7), (3, 5), (1, 4), (40, 9), (2, 170)])
def test_index_matches_spec(height, width):
    index = euclidean_bucket_index(height, width)
    positions = [(r, c) for r in range(height) for c in range(width)]
    expected = torch.tensor([[naive_bucket(a[0] - b[0], a[1] - b[1]) for b in positions] for a in positions])
    assert torch.equal(index, expected)
    assert index.max() <= 80


def test_bias_shape_and_per_module_cache():
    first, second = RelPosBias(4), RelPosBias(4)
    with torch.no_grad():
        first.bias_table.copy_(torch.arange(4 * 81, dtype=torch.float32).view(4, 81))
    bias = first(3, 5)
    assert bias.shape == (1, 4, 15, 15)
    assert bias[0, 2, 0, 14].item() == 2 * 81 + naive_bucket(0 - 2, 0 - 4)
    assert set(first._index_cache) == {(3, 5, "cpu")} and not second._index_cache
    first(5, 3)
    assert len(first._index_cache) == 2


def test_caches_keep_only_the_most_recent_shapes():
    bias = RelPosBias(num_heads=2)
    for size in range(1, 20):
        bias(size, size + 1)
    assert len(bias._index_cache) == SHAPES_KEPT
    assert (19, 20, "cpu") in bias._index_cache and (1, 2, "cpu") not in bias._index_cache
    torch.testing.assert_close(bias(3, 4), RelPosBias(num_heads=2)(3, 4))
