"""Parameter and MAC counts against the spec's reference table (architecture.md, section 2)."""
import pytest
import timm

import patnet  # noqa: F401  (registers the models)
from patnet.flops import count_macs, count_params

REFERENCE = {
    "patnet_t0": (3_486_160, 232_612_736),
    "patnet_t1": (6_144_552, 540_339_488),
    "patnet_t2": (12_269_816, 1_032_587_264),
    "patnet_s": (28_013_304, 2_704_557_824),
    "patnet_m": (59_179_000, 6_672_846_848),
    "patnet_l": (100_641_336, 11_881_544_960),
}
SPATIAL_ATTN_PARAMS = {
    "patnet_t0": 3_558_240,
    "patnet_t2": 12_650_424,
    "patnet_s": 28_975_704,
    "patnet_m": 61_366_776,
    "patnet_l": 104_465_336,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_and_macs_match_reference(name):
    params, macs = REFERENCE[name]
    model = timm.create_model(name)
    assert count_params(model) == params
    assert abs(count_macs(model, (3, 224, 224)) - macs) <= 0.005 * macs


@pytest.mark.parametrize("name", sorted(SPATIAL_ATTN_PARAMS))
def test_params_with_spatial_attention(name):
    assert count_params(timm.create_model(name, spatial_attn=True)) == SPATIAL_ATTN_PARAMS[name]


def test_each_extra_head_adds_81_params_per_stage4_block():
    base = count_params(timm.create_model("patnet_t0"))
    more_heads = count_params(timm.create_model("patnet_t0", num_heads=6))
    assert more_heads - base == 2 * 2 * 81  # two stage-4 blocks, two extra heads


def test_all_six_variants_registered():
    assert sorted(timm.list_models(module="patnet")) == sorted(REFERENCE)
    assert not any(name.startswith("fasternet") for name in timm.list_models(module="patnet"))
    assert timm.create_model("fasternet_t0").__class__.__module__ == "timm.models.fasternet"
