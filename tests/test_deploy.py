"""The deployment form equals the training form in eval mode, for every variant and several sizes."""
import pytest
import timm
import torch
from helpers import randomize_inference_state, relative_error
from timm.utils import reparameterize_model

import patnet  # noqa: F401
from patnet.deploy import deploy
from patnet.export import script

SIZES = [(64, 64), (96, 72), (97, 131)]


@pytest.mark.parametrize("name", timm.list_models(module="patnet"))
def test_deploy_equals_eval_form(name):
    model = randomize_inference_state(timm.create_model(name, num_classes=10), seed=3).eval()
    folded = deploy(model)
    # every BN is folded; PAT_sp's post-gate BN is kept as a scale and shift (not foldable)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    for height, width in SIZES:
        x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            assert relative_error(model(x), folded(x)) <= 1e-5


def test_deploy_keeps_original_and_is_idempotent():
    model = randomize_inference_state(timm.create_model("patnet_t1", num_classes=10), seed=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = deploy(model)
    twice = deploy(folded)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(twice(x), folded(x), rtol=0, atol=0)
        assert relative_error(model(x), folded(x)) <= 1e-5


def test_deploy_of_train_mode_model_uses_running_stats():
    model = randomize_inference_state(timm.create_model("patnet_t0", num_classes=10), seed=5).train()
    folded = deploy(model)
    assert model.training and not folded.training
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model.eval()(x), folded(x)) <= 1e-5


def test_timm_reparameterize_model_uses_our_hooks():
    model = randomize_inference_state(timm.create_model("patnet_t1", num_classes=10), seed=6).eval()
    folded = reparameterize_model(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x), folded(x)) <= 1e-5
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 0


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_t2"])
def test_fasternet_folding_is_exact(name):
    model = randomize_inference_state(timm.create_model(name, num_classes=10), seed=7).eval()
    folded = deploy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x), folded(x)) <= 1e-5


def test_scripted_deploy_form():
    model = randomize_inference_state(timm.create_model("patnet_t1", num_classes=10), seed=8).eval()
    folded = deploy(model)
    scripted = script(folded)
    x = torch.randn(1, 3, 80, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x), scripted(x)) <= 1e-5


def test_deploy_rejects_non_modules():
    with pytest.raises(TypeError, match="takes an nn.Module"):
        deploy("patnet_t0")


class _DataDependent(torch.nn.Module):
    """torch.fx cannot trace it (a Python branch on a tensor value): deploy folds what the module tree shows."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())

    def forward(self, x):
        return self.body(x) if x.sum() >= 0 else self.body(-x)


def test_untraceable_models_fold_their_sequential_conv_bn_pairs():
    model = randomize_inference_state(_DataDependent(), seed=9).eval()
    folded = deploy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x), folded(x)) <= 1e-5
