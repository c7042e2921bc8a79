"""Expected-output regression: a seeded small model's logits on a fixed input, stored once.

Regenerate only on an intended change of the math: ``python tests/test_expected_output.py``.
"""
import json
from pathlib import Path

import timm
import torch
from helpers import fixed_input, randomize_inference_state

import patnet  # noqa: F401

EXPECTED = Path(__file__).parent / "data" / "expected_logits.json"
CONFIG = dict(embed_dim=16, depths=(1, 1, 2, 2), spatial_attn=True, num_classes=10, feature_dim=64)


def compute_logits() -> torch.Tensor:
    torch.manual_seed(0)
    model = randomize_inference_state(timm.create_model("patnet_t0", **CONFIG), seed=1).eval()
    with torch.no_grad():  # unit-variance weights, so logits are O(1) and the comparison is sharp
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(50.0 / module.weight[0].numel() ** 0.5)
    with torch.no_grad():
        return model(fixed_input(2, 3, 96, 64) * 2.0)


def test_logits_match_stored():
    stored = json.loads(EXPECTED.read_text())
    assert stored["config"] == json.loads(json.dumps(CONFIG))
    torch.testing.assert_close(compute_logits(), torch.tensor(stored["logits"]), rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    EXPECTED.write_text(json.dumps({"config": CONFIG, "logits": compute_logits().tolist()}, indent=1) + "\n")
    print(f"wrote {EXPECTED}")
