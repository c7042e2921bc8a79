"""The detection study's machinery on a tiny plan: pretraining, detection runs, skip and resume, report."""
import json
from dataclasses import replace

import pytest

from patnet.detection import study
from patnet.detection.study_report import METRICS
from patnet.study import runner as study_runner

pytestmark = pytest.mark.usefixtures("one_thread")

# Both backbones, 2 seeds, on 8 tiny scenes: seconds per run. Pretraining on 256 Fashion-MNIST images, scored on
# 64 held-out training images.
TINY = replace(
    study.PLANS["quick"], name="tiny", pretrain_subset=256, pretrain_holdout=64,
    scenes=dict(canvas=64, min_items=1, max_items=3, max_scale=2.0, train_canvases=8, val_canvases=4),
    pretrain={**study.PLANS["quick"].pretrain, "img_size": 32, "batch_size": 64},
    detect=dict(epochs=1, lr_steps=(1,), warmup_iters=1, min_size=64, max_size=64, fpn_channels=16, box_head_dim=32,
                mask_head_layers=(16,), detector_kwargs=dict(rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=20,
                                                             box_batch_size_per_image=16, box_detections_per_img=10)),
    latency_warmup=1, latency_iters=2, latency_images=2)


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("detection-study")
    results = study.run_detection_study(TINY, root / "out", root / "report", "patnet detect study (tiny)", log=quiet)
    return root, results


def test_the_report_is_computed_from_the_runs(tiny_study):
    root, results = tiny_study
    assert [row["backbone"] for row in results["rows"]] == list(study.BACKBONES)
    for row in results["rows"]:
        assert row["seeds"] == [0, 1]
        finals = [json.loads((root / "out" / "detect" / row["backbone"] / f"seed{s}" / "metrics.json").read_text())[-1]
                  for s in row["seeds"]]
        for metric in METRICS:
            assert row[metric] == [f[metric] for f in finals]
        assert row["backbone_macs"] > 0 and row["detector_ms"] > 0 and row["backbone_ms"] > 0
        assert set(row["untrained"]) == {"bbox_AP", "segm_AP"}
    by = {row["backbone"]: row for row in results["rows"]}
    assert by["fasternet_t0"]["detector_ratio"] == 1.0 and by["patnet_t0"]["detector_ratio"] > 0
    markdown = (root / "report" / "results.md").read_text()
    assert "`patnet detect study (tiny)`" in markdown and "PATNet-T0 minus FasterNet-T0, box AP" in markdown
    assert (root / "report" / "ap_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    pretrained = json.loads((root / "out" / "pretrain" / "patnet_t0" / "metrics.json").read_text())
    assert [row["epoch"] for row in pretrained] == [1]


def test_the_detectors_start_from_the_pretrained_backbones(tiny_study):
    root, _ = tiny_study
    for run in study.detection_runs(TINY, root / "out"):
        assert run.config.backbone_weights == str(root / "out" / "pretrain" / run.backbone / "last")


def test_a_second_invocation_trains_nothing(tiny_study, monkeypatch):
    root, results = tiny_study
    monkeypatch.setattr(study, "train_detector", lambda *a, **k: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(study_runner, "train", lambda *a, **k: pytest.fail("a finished pretraining ran again"))
    again = study.run_detection_study(TINY, root / "out", root / "report", "again", log=quiet)
    assert [row["bbox_AP"] for row in again["rows"]] == [row["bbox_AP"] for row in results["rows"]]
    assert [i["epochs_trained"] for i in again["invocations"]] == [2 + 4, 0]


def test_a_run_made_with_another_recipe_is_refused(tiny_study):
    root, _ = tiny_study
    changed = replace(TINY, detect={**TINY.detect, "fpn_channels": 8})
    with pytest.raises(ValueError, match=r"seed0 was trained with fpn_channels=16 but the study's recipe has 8"):
        study.run_detection_study(changed, root / "out", root / "report2", "changed", log=quiet)
