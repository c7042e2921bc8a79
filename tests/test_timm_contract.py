"""The timm model contract over every registered patnet_* model."""
import pytest
import timm
import torch
from helpers import fixed_input, randomize_inference_state
from timm.optim import create_optimizer_v2

import patnet  # noqa: F401
from patnet.export import script

MODELS = timm.list_models(module="patnet")
IMG = 64  # smallest round size at which every stage keeps a 2x2 map with the default stem


def _small_input(batch=2, chans=3, size=IMG):
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_new_class_count(name):
    model = timm.create_model(name, num_classes=7)
    model.train()
    out = model(_small_input())
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_features_only_channels_and_strides(name):
    model = timm.create_model(name, features_only=True).eval()
    base = timm.create_model(name)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [base.feature_info[i]["num_chs"] for i in range(4)]
    x = _small_input(1, 3, 128)
    feats = model(x)
    for feat, chans, stride in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
        assert feat.shape == (1, chans, 128 // stride, 128 // stride)


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_and_scripted_forward(name):
    model = randomize_inference_state(timm.create_model(name, num_classes=5)).eval()
    x = _small_input()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        features = model.forward_features(x)
        assert len(intermediates) == 4
        torch.testing.assert_close(final, features)
        torch.testing.assert_close(intermediates[-1], features)
        only = model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(only[1], intermediates[2])
        # TorchScript is the portable deployment path (and what timm's own contract tests use).
        scripted = script(model)
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_gives_same_output_and_grads(name):
    kwargs = dict(num_classes=3, attn_drop=0.0, proj_drop=0.0, drop_path_rate=0.0)
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).train()
    x = _small_input()
    out = model(x)
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


def test_head_contract():
    model = timm.create_model("patnet_t0", num_classes=10, in_chans=1)
    assert model.num_features == 256 and model.head_hidden_size == 1280
    assert model.get_classifier().out_features == 10
    x = fixed_input(2, 1, 64, 64)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    model.reset_classifier(0)
    assert model(x).shape == (2, 1280)


def test_pretrained_cfg():
    for name in MODELS:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["input_size"] == (3, 224, 224)
        assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "classifier"
        assert cfg["paper_ids"] == "arXiv:2503.03148"
        assert {"crop_pct", "interpolation", "mean", "std"} <= set(cfg)


def test_custom_config_from_keywords():
    model = timm.create_model("patnet_t1", embed_dim=16, depths=(1, 1, 1, 1), spatial_attn=False,
                              act_layer="relu", feature_dim=64, num_classes=10)
    assert model(_small_input()).shape == (2, 10)
    assert model.num_features == 128 and model.head_hidden_size == 64
    assert isinstance(model.act, torch.nn.ReLU)
    assert not any("gate_conv" in n for n, _ in model.named_parameters())


def test_small_stem_for_small_images():
    model = timm.create_model("patnet_t0", in_chans=1, num_classes=10, patch_size=2, patch_stride=2).eval()
    assert model(fixed_input(1, 1, 28, 28)).shape == (1, 10)
    assert model.min_input_size == 16


def test_no_weight_decay_and_param_groups():
    model = timm.create_model("patnet_t2")
    nwd = model.no_weight_decay()
    assert len(nwd) == 4 and all(n.endswith("rel_pos.bias_table") for n in nwd)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    assert len(optimizer.param_groups) > 2


def test_prune_intermediate_layers():
    model = timm.create_model("patnet_t0").eval()
    taken = model.prune_intermediate_layers(indices=[0, 1])
    assert taken == [0, 1] and len(model.stages) == 2
    feats = model.forward_intermediates(_small_input(1), indices=[0, 1], intermediates_only=True)
    assert [f.shape[1] for f in feats] == [32, 64]


@pytest.mark.parametrize("size", [(224, 224), (256, 192), (97, 131), (64, 64)])
def test_any_input_size(size):
    model = randomize_inference_state(timm.create_model("patnet_t0", num_classes=3)).eval()
    with torch.no_grad():
        features = model.forward_features(fixed_input(1, 3, *size))
        out = model.forward_head(features)
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    assert features.shape[-2:] == (size[0] // 32, size[1] // 32)
    rel_pos = model.stages[3].blocks[0].spatial_mixing.attn.rel_pos
    assert any(key[:2] == tuple(features.shape[-2:]) for key in rel_pos._index_cache)
