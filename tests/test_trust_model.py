"""PATNet's keywords and inputs: each one builds a working network or is refused in one line, never silently wrong.

The property tests draw constructor keywords and inputs (valid and invalid alike): every draw either builds
a model whose eval-mode output is finite and of the right shape, or raises a one-line ValueError/TypeError.
"""
import math

import pytest
import timm
import torch
from helpers import fixed_input
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patnet  # noqa: F401
from patnet.errors import UserError
from patnet.export import script
from patnet.models.patnet import MIXERS, POOLS

TINY = dict(embed_dim=8, depths=(1, 1, 1, 1), feature_dim=16, num_classes=3)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_div=0), r"n_div=0 is invalid: expected an integer >= 1"),  # was ZeroDivisionError
    (dict(n_div=1), r"n_div=1 leaves no channel for the attention"),
    (dict(n_div=2.5), r"n_div=2.5 is invalid"),
    (dict(mlp_ratio=0), r"mlp_ratio=0 is invalid: expected a positive number"),
    (dict(mlp_ratio=-1.0), r"mlp_ratio=-1.0 is invalid"),
    (dict(mlp_ratio=float("nan")), r"mlp_ratio=nan is invalid"),
    (dict(mlp_ratio=0.01), r"mlp_ratio=0.01 gives an MLP of no channel at width 8"),
    (dict(patch_size=0), r"patch_size=0 is invalid: expected an integer >= 1"),
    (dict(patch_stride=-2), r"patch_stride=-2 is invalid: expected an integer >= 1"),
    (dict(in_chans=0), r"in_chans=0 is invalid: expected an integer >= 1"),
    (dict(drop_path_rate=-0.1), r"drop_path_rate=-0.1 is invalid: expected a rate in \[0, 1\)"),  # was accepted
    (dict(drop_path_rate=1.5), r"drop_path_rate=1.5 is invalid"),  # failed only in a training forward
    (dict(drop_rate=1.0), r"drop_rate=1.0 is invalid"),
    (dict(attn_drop=-1), r"attn_drop=-1 is invalid"),
    (dict(proj_drop=2.0), r"proj_drop=2.0 is invalid"),
    (dict(num_classes=-1), r"num_classes=-1 is invalid: expected an integer >= 0"),  # was a feature extractor
    (dict(depths=(1, 1.7, 1, 1)), r"depths=\(1, 1.7, 1, 1\) is invalid: expected a list of integers"),  # was 1
    (dict(depths=(1, 0)), r"depths=\(1, 0\) is invalid"),
    (dict(depths=()), r"depths=\(\) is invalid"),
    (dict(depths=4), r"depths=4 is invalid"),
    (dict(embed_dim=0), r"embed_dim=0 is invalid"),
    (dict(embed_dim=8.0), r"embed_dim=8.0 is invalid"),
    (dict(num_heads=0), r"num_heads=0 is invalid"),
    (dict(feature_dim=0), r"feature_dim=0 is invalid"),
    (dict(spatial_attn="yes"), r"spatial_attn='yes' is invalid: expected True or False"),
    (dict(global_pool="catavgmax"), r"global_pool='catavgmax' is invalid: choose one of"),
    (dict(global_pool=""), r"global_pool='' \(no pooling\) .* pass num_classes=0"),
    (dict(mixers="pconv"), r"mixers must give one of"),
    (dict(depths=(1, 1), features_only=True, out_indices=(0, 1, 2, 3)),
     r"out_indices=\(0, 1, 2, 3\) names stages this model lacks: depths=\(1, 1\) gives 2 stage\(s\)"),
])
def test_bad_keywords_are_refused_at_construction_in_one_line(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        timm.create_model("patnet_t0", **{**TINY, **kwargs})
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_features_only_follows_the_depth_list():
    model = timm.create_model("patnet_t0", embed_dim=8, depths=(1, 1), features_only=True).eval()
    assert [f.shape[1] for f in model(fixed_input(1, 3, 32, 32))] == [8, 16]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_input_of_another_dtype_is_one_clear_type_error(dtype):
    model = timm.create_model("patnet_t0", **TINY).eval()
    with pytest.raises(TypeError, match=rf"expected a torch.float32 input .* got {dtype}; convert it with x.to"):
        model(fixed_input(1, 3, 64, 64).to(dtype))


def test_input_of_another_dtype_runs_under_autocast_and_in_a_model_of_that_dtype():
    model = timm.create_model("patnet_t0", **TINY).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(fixed_input(2, 3, 64, 64).bfloat16()).shape == (2, 3)
    with torch.no_grad():
        assert model.double()(fixed_input(2, 3, 64, 64).double()).dtype == torch.float64


def test_reset_classifier_checks_its_arguments():
    model = timm.create_model("patnet_t0", **TINY)
    with pytest.raises(ValueError, match="num_classes=-2 is invalid"):
        model.reset_classifier(-2)
    with pytest.raises(ValueError, match="global_pool='bogus' is invalid"):
        model.reset_classifier(5, "bogus")
    model.reset_classifier(0, "")  # the unpooled features, as timm's contract asks
    assert model.eval()(fixed_input(1, 3, 64, 64)).dim() == 4


RATES = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 0.1, 1.0, float("nan")]))
KEYWORDS = st.fixed_dictionaries({}, optional={
    "embed_dim": st.one_of(st.integers(-2, 24), st.just(8.0)),
    "depths": st.one_of(st.lists(st.integers(-1, 2), max_size=5), st.lists(st.sampled_from([1, 1.5, True]),
                                                                             min_size=1, max_size=4)),
    "mlp_ratio": st.one_of(st.floats(-1, 4), st.sampled_from([float("inf"), float("nan"), 0.05])),
    "n_div": st.one_of(st.integers(-1, 40), st.just(2.0)),
    "patch_size": st.integers(-1, 5),
    "patch_stride": st.one_of(st.none(), st.integers(-1, 5)),
    "feature_dim": st.integers(-1, 48),
    "num_heads": st.integers(-1, 5),
    "drop_rate": RATES, "drop_path_rate": RATES, "attn_drop": RATES, "proj_drop": RATES,
    "spatial_attn": st.sampled_from([False, True, 1]),
    "num_classes": st.integers(-2, 12),
    "in_chans": st.integers(-1, 4),
    "global_pool": st.sampled_from(POOLS + ("catavgmax", "bogus")),
    "mixers": st.one_of(st.none(), st.lists(st.sampled_from(MIXERS + ("conv",)), max_size=5)),
    "act_layer": st.sampled_from(["relu", "gelu", "silu", "nope"]),
})
# Inputs for a model that builds: channels 0 means the model's own count, sides 0 its smallest input size.
INPUTS = st.tuples(st.integers(1, 3), st.one_of(st.just(0), st.integers(1, 4)),
                   st.one_of(st.just(0), st.integers(1, 96)), st.one_of(st.just(0), st.integers(1, 96)),
                   st.one_of(st.just(torch.float32),
                             st.sampled_from([torch.float64, torch.bfloat16, torch.float16, torch.uint8, torch.int64])))
DRAWS = {"keywords": 0, "built": 0, "inputs": 0, "ran": 0}


def _one_line_refusal(exc: BaseException) -> None:
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc) and str(exc), repr(exc)


def _run(model, batch: int, chans: int, height: int, width: int, dtype: torch.dtype) -> bool:
    """Run one input through ``model``: a finite output of the right shape (True) or a one-line refusal."""
    smallest = model.min_input_size
    x = torch.rand(batch, chans or model.in_chans, height or smallest, width or smallest,
                   generator=torch.Generator().manual_seed(0)) * 4 - 2
    try:
        with torch.no_grad():
            out = model(x.to(dtype))
    except Exception as exc:  # noqa: BLE001 - the property: only one-line ValueError/TypeError
        _one_line_refusal(exc)
        return False
    if model.num_classes:
        assert out.shape == (batch, model.num_classes)
    elif model.global_pool.is_identity():
        assert out.dim() == 4 and out.shape[:2] == (batch, model.head_hidden_size)
    else:
        assert out.shape == (batch, model.head_hidden_size)
    assert torch.isfinite(out).all()
    return True


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keywords=KEYWORDS)
def test_every_keyword_draw_builds_a_working_model_or_is_refused_in_one_line(keywords):
    DRAWS["keywords"] += 1
    try:
        model = timm.create_model("patnet_t0", **keywords).eval()
    except Exception as exc:  # noqa: BLE001 - the property: only one-line ValueError/TypeError
        _one_line_refusal(exc)
        return
    DRAWS["built"] += 1
    assert _run(model, 2, 0, 0, 0, torch.float32), "a model that builds must take its smallest input"


@pytest.fixture(scope="module")
def small_models():
    return [timm.create_model("patnet_t0", **TINY).eval(),
            timm.create_model("patnet_t1", embed_dim=8, depths=(1, 1, 1), in_chans=1, num_classes=0, patch_size=2,
                              mixers=("pconv", "pat_ch", "pat_sf"), feature_dim=16).eval(),
            timm.create_model("patnet_t2", embed_dim=4, depths=(1, 1), num_heads=2, num_classes=0,
                              global_pool="").eval()]


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), inputs=INPUTS)
def test_every_input_draw_gives_a_finite_output_of_the_right_shape_or_one_line(small_models, which, inputs):
    DRAWS["inputs"] += 1
    DRAWS["ran"] += _run(small_models[which], *inputs)


def test_the_properties_drew_working_cases_too():
    """Guard against strategies that only ever draw refusals (run after the property tests above)."""
    if not DRAWS["keywords"] or not DRAWS["inputs"]:
        pytest.skip("run with the property tests")
    print(f"model property draws: {DRAWS}")
    assert DRAWS["keywords"] > DRAWS["built"] >= 10 and DRAWS["inputs"] > DRAWS["ran"] >= 10, DRAWS


def test_fused_and_scripted_forms_keep_working_with_the_dtype_check():
    from patnet.deploy import deploy
    model = timm.create_model("patnet_t0", **TINY).eval()
    x = fixed_input(2, 3, 64, 64)
    scripted = script(deploy(model))
    with torch.no_grad():
        assert math.isclose(float((scripted(x) - model(x)).abs().max()), 0.0, abs_tol=1e-4)
