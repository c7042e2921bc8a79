"""The authors' checkpoint layout loads strictly and computes what their model computes.

The key table (shared/spec/official-state-dict-keys.tsv, copied to tests/data) comes from the authors'
code for a small config with every block type. Random weights in that layout are saved the way their
files are (plain, and Lightning-wrapped under ``state_dict`` with a ``model.`` prefix), loaded through
timm, and the model's output is compared with an independent functional forward written from the spec
that reads the authors' keys directly.
"""
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import patnet  # noqa: F401

KEY_TABLE = Path(__file__).parent / "data" / "official-state-dict-keys.tsv"
ARCH = dict(embed_dim=32, depths=(1, 1, 2, 2), act_layer="gelu", spatial_attn=True, num_heads=4,
            feature_dim=128, num_classes=10)


def official_state_dict(seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for line in KEY_TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("norm.weight", "bn.weight", "norm2.weight", "mlp.1.weight")) and len(shape) == 1:
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            scale = 0.2 if len(shape) == 1 else 0.5 / math.sqrt(math.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * scale
    return state


def _bn(sd, prefix, x):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=1e-5)


def _hsig(x):
    return F.relu6(x + 3) / 6


def _bucket(drow, dcol, alpha=20, beta=40, gamma=160):
    d = round(math.sqrt(drow * drow + dcol * dcol))
    idx = d if d <= alpha else min(beta, round(alpha + math.log(d / alpha) / math.log(gamma / alpha) * (beta - alpha)))
    return idx + beta


def reference_forward(sd, x, depths=(1, 1, 2, 2), heads=4, n_div=4):
    """PATNet's forward as architecture.md states it, on the authors' state-dict keys."""
    x = _bn(sd, "patch_embed.norm", F.conv2d(x, sd["patch_embed.proj.weight"], stride=4))
    for s, depth in enumerate(depths):
        if s:
            x = _bn(sd, f"stages.{2 * s - 1}.norm", F.conv2d(x, sd[f"stages.{2 * s - 1}.reduction.weight"], stride=2))
        for b in range(depth):
            p = f"stages.{2 * s}.blocks.{b}"
            cp = x.shape[1] // n_div
            xp, xu = x[:, :cp], x[:, cp:]
            yp = F.conv2d(xp, sd[f"{p}.spatial_mixing.partial_conv3.weight"], padding=1)
            if s < len(depths) - 1:  # PAT_ch, single residual
                flat = xu.flatten(2)
                mu, sdev = flat.mean(-1), flat.std(-1, correction=1)
                w = sd[f"{p}.spatial_mixing.attn.cfc1.weight"]
                z = mu @ w[:, :, 0, 0].T + sdev @ w[:, :, 0, 1].T
                g = _hsig(_bn(sd, f"{p}.spatial_mixing.attn.bn", z[:, :, None, None]))
                mixed = torch.cat([yp, _bn(sd, f"{p}.spatial_mixing.norm", xu * g)], 1)
                x = x + _mlp(sd, p, mixed)
            else:  # PAT_sf, two residuals
                B, cu, H, W = xu.shape
                tokens = xu.flatten(2).transpose(1, 2)
                mean = tokens.mean(-1, keepdim=True)
                var = tokens.var(-1, unbiased=False, keepdim=True)
                tokens = (tokens - mean) / torch.sqrt(var + 1e-6) * sd[f"{p}.spatial_mixing.norm.weight"] \
                    + sd[f"{p}.spatial_mixing.norm.bias"]
                qkv = tokens @ sd[f"{p}.spatial_mixing.attn.qkv.weight"].T
                q, k, v = qkv.reshape(B, H * W, 3, heads, cu // heads).permute(2, 0, 3, 1, 4)
                pos = [(r, c) for r in range(H) for c in range(W)]
                table = sd[f"{p}.spatial_mixing.attn.rpe_k.lookup_table_bias"]
                bias = torch.stack([torch.stack([table[:, _bucket(a[0] - b_[0], a[1] - b_[1])] for b_ in pos], -1)
                                    for a in pos], -2)  # (heads, L, L)
                logits = (q * (cu // heads) ** -0.5) @ k.transpose(-1, -2) + bias
                out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, H * W, cu)
                out = out @ sd[f"{p}.spatial_mixing.attn.proj.weight"].T + sd[f"{p}.spatial_mixing.attn.proj.bias"]
                x = x + torch.cat([yp, out.transpose(1, 2).reshape(B, cu, H, W)], 1)
                x = x + _mlp(sd, p, x)
    x = F.gelu(F.conv2d(x.mean((2, 3), keepdim=True), sd["avgpool_pre_head.1.weight"])).flatten(1)
    return x @ sd["head.weight"].T + sd["head.bias"]


def _mlp(sd, p, x):
    h = F.gelu(_bn(sd, f"{p}.mlp.1", F.conv2d(x, sd[f"{p}.mlp.0.weight"])))
    y = F.conv2d(h, sd[f"{p}.mlp.3.weight"])
    cc = y.shape[1] // 2
    a, c = y[:, :y.shape[1] - cc], y[:, y.shape[1] - cc:]
    a = _bn(sd, f"{p}.mlp.4.norm", a * _hsig(F.conv2d(a, sd[f"{p}.mlp.4.conv_attn.weight"])))
    c = F.conv2d(_bn(sd, f"{p}.mlp.4.norm2", c), sd[f"{p}.mlp.4.conv.weight"])
    return torch.cat([a, c], 1)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "lightning"])
def test_official_layout_loads_strictly_and_matches_reference(tmp_path, wrapped):
    sd = official_state_dict()
    saved = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3} if wrapped else sd
    path = tmp_path / "official.pth"
    torch.save(saved, path)
    model = timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **ARCH)
    model.eval()
    own = model.state_dict()
    assert len(own) == len(sd)  # strict load: every key mapped, none left over
    x = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(sd, x), rtol=1e-4, atol=1e-4)


def test_own_layout_round_trips(tmp_path):
    model = timm.create_model("patnet_t0", **ARCH)
    path = tmp_path / "own.pth"
    torch.save(model.state_dict(), path)
    loaded = timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **ARCH)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_key_table_in_tests_matches_spec():
    spec = Path(__file__).resolve().parents[2] / "shared" / "spec" / "official-state-dict-keys.tsv"
    if not spec.exists():
        pytest.skip("shared/spec is not beside this checkout")
    assert spec.read_text() == KEY_TABLE.read_text()
