"""Detection: every arch on PATNet and FasterNet backbones, COCO data and evaluation, bad input, train/resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from patnet.cli import main
from patnet.data.coco import CocoDetection, hflip
from patnet.data.scenes import SceneSpec, write_scenes
from patnet.detection import build_detector
from patnet.detection.coco_eval import evaluate_results
from patnet.detection.config import make_detect_config
from patnet.detection.data import SYNTHETIC_SCENES
from patnet.detection.models import TimmFpnBackbone

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_BACKBONES = {"patnet_t0": dict(embed_dim=16, depths=(1, 1, 1, 1)),
                  "fasternet_t0": dict(embed_dim=16, depths=(1, 1, 1, 1))}
SMALL_HEADS = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50,
                   rpn_post_nms_top_n_test=30, box_batch_size_per_image=32, box_detections_per_img=20)
TINY_DETECTOR = dict(in_chans=1, image_mean=[0.5], image_std=[0.25], min_size=64, max_size=96, fpn_channels=32,
                     anchor_sizes=(8, 16, 32, 64, 128))


def tiny_detector(arch, backbone, num_classes=4, **kwargs):
    heads = {} if arch == "retinanet" else SMALL_HEADS
    return build_detector(arch, backbone, num_classes, backbone_kwargs=TINY_BACKBONES[backbone],
                          **{**TINY_DETECTOR, **heads, **kwargs})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The built-in synthetic set (what `--dataset synthetic` writes)."""
    return write_scenes(tmp_path_factory.mktemp("scenes") / "synthetic", "synthetic", SceneSpec(**SYNTHETIC_SCENES))


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
@pytest.mark.parametrize("arch", ["maskrcnn", "fasterrcnn", "retinanet"])
def test_every_arch_trains_and_predicts_on_images_of_different_sizes(arch, backbone, scenes):
    torch.manual_seed(0)
    model = tiny_detector(arch, backbone)
    dataset = CocoDetection(scenes, "train", in_chans=1, masks=arch == "maskrcnn")
    (small, target), (other, other_target) = dataset[0], dataset[1]
    large = torch.nn.functional.interpolate(other[None], size=(80, 48))[0]
    scale = torch.tensor([48 / 64, 80 / 64, 48 / 64, 80 / 64])
    large_target = dict(other_target, boxes=other_target["boxes"] * scale)
    if "masks" in other_target:
        large_target["masks"] = torch.nn.functional.interpolate(other_target["masks"][None].float(),
                                                                size=(80, 48))[0].to(torch.uint8)
    model.train()
    losses = model([small, large], [target, large_target])
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None for p in model.backbone.body.parameters())
    model.eval()
    with torch.no_grad():
        outputs = model([small, large])
    assert len(outputs) == 2
    expected = {"boxes", "labels", "scores"} | ({"masks"} if arch == "maskrcnn" else set())
    for output, image in zip(outputs, (small, large)):
        assert set(output) == expected
        if len(output["labels"]):
            assert 1 <= output["labels"].min() and output["labels"].max() <= 4
        if arch == "maskrcnn":
            assert output["masks"].shape[-2:] == image.shape[-2:]


def test_frozen_stages_and_norm_eval():
    model = tiny_detector("fasterrcnn", "patnet_t0", frozen_stages=2, norm_eval=True)
    body = model.backbone.body
    frozen = {name for name, p in body.named_parameters() if not p.requires_grad}
    assert any("patch_embed" in n for n in frozen) and any(".stages.1." in n for n in frozen)
    assert not any(".stages.2." in n or ".stages.3." in n for n in frozen)
    model.train()
    batch_norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and not any(m.training for m in batch_norms)
    with pytest.raises(ValueError, match="frozen_stages=9"):
        tiny_detector("fasterrcnn", "patnet_t0", frozen_stages=9)


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="yolo"), "unknown detector 'yolo'"),
    (dict(num_classes=0), "num_classes must be at least 1"),
    (dict(levels=(2, 1)), "feature levels must be increasing"),
    (dict(anchor_sizes=(8, 16)), "one size per pyramid level"),
    (dict(image_mean=None), "needs image_mean and image_std"),
])
def test_bad_detector_options_are_one_line_errors(kwargs, message):
    arch = kwargs.pop("arch", "maskrcnn")
    num_classes = kwargs.pop("num_classes", 4)
    with pytest.raises(ValueError, match=message):
        tiny_detector(arch, "patnet_t0", num_classes, **kwargs)


@pytest.mark.parametrize("preset, epochs, steps", [
    ("coco-1x", 24, (16, 22)),  # the 2x schedule
    ("coco-1x", 1, (1,)),
    ("fm-scenes", 12, (10,)),
    (None, 3, (2, 3)),
])
def test_lr_steps_follow_a_changed_epoch_count(preset, epochs, steps):
    kwargs = dict(data_dir="coco") if preset in (None, "coco-1x") else {}
    assert make_detect_config(preset, epochs=epochs, **kwargs).lr_steps == steps
    assert make_detect_config(preset, epochs=epochs, lr_steps=(epochs,), **kwargs).lr_steps == (epochs,)


def test_backbone_weights_come_from_a_patnet_train_checkpoint(tmp_path):
    from patnet.engine import make_config, train
    config = make_config(model="patnet_t0", model_kwargs=dict(TINY_BACKBONES["patnet_t0"]), dataset="synthetic",
                         img_size=32, epochs=1, batch_size=16, warmup_epochs=0, output=str(tmp_path / "cls"))
    train(config)
    model = tiny_detector("fasterrcnn", "patnet_t0", backbone_weights=str(tmp_path / "cls" / "best"))
    from patnet.engine.inference import load_trained_model
    trained, _ = load_trained_model(tmp_path / "cls")
    assert torch.equal(model.backbone.body.model.patch_embed.proj.weight, trained.patch_embed.proj.weight)
    with pytest.raises(ValueError, match="hold a patnet_t0 model, not fasternet_t0"):
        tiny_detector("fasterrcnn", "fasternet_t0", backbone_weights=str(tmp_path / "cls"))
    plain = tmp_path / "state_dict.pth"  # a plain weights file, as the authors' checkpoints are
    torch.save(trained.state_dict(), plain)
    from_file = tiny_detector("retinanet", "patnet_t0", backbone_weights=str(plain))
    assert torch.equal(from_file.backbone.body.model.stages[3].blocks[0].mlp[0].weight,
                       trained.stages[3].blocks[0].mlp[0].weight)


# --- COCO data ---------------------------------------------------------------------------------------------


def write_coco(root, split="val", images=3, annotations=None, categories=None, size=(40, 60)):
    """A small COCO folder: ``images`` grey images of ``size`` (h, w), the given annotations and categories."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    infos = []
    for image_id in range(1, images + 1):
        name = f"{image_id}.png"
        Image.fromarray(np.full(size, 40 * image_id, dtype=np.uint8)).save(root / split / name)
        infos.append(dict(id=image_id, file_name=name, height=size[0], width=size[1]))
    categories = categories or [dict(id=3, name="cat"), dict(id=7, name="dog"), dict(id=42, name="bird")]
    data = dict(images=infos, annotations=annotations or [], categories=categories)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def box_ann(ann_id, image_id, category_id, bbox, **extra):
    x, y, w, h = bbox
    polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=bbox, area=w * h, iscrowd=0,
                segmentation=polygon, **extra)


def test_coco_targets_map_category_ids_clip_boxes_and_drop_crowds(tmp_path, recwarn):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((10, 10), np.uint8), ((5, 25), (30, 20)))))
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = [box_ann(1, 1, 42, [50, 30, 20, 20]),          # sticks out of the 60x40 image: clipped
                   box_ann(2, 1, 3, [10, 10, 0, 5]),             # zero area: dropped
                   dict(box_ann(3, 1, 7, [0, 0, 5, 5]), iscrowd=1),  # crowd: not a training target
                   dict(id=4, image_id=1, category_id=7, bbox=[30, 5, 10, 10], area=100, iscrowd=0, segmentation=rle)]
    root = write_coco(tmp_path, annotations=annotations)
    dataset = CocoDetection(root, "val", in_chans=1)
    image, target = dataset[0]
    assert image.shape == (1, 40, 60) and dataset.class_names == ["cat", "dog", "bird"]
    assert target["labels"].tolist() == [3, 2]  # bird -> 3, dog -> 2
    assert target["boxes"].tolist() == [[50.0, 30.0, 60.0, 40.0], [30.0, 5.0, 40.0, 15.0]]
    assert target["masks"].shape == (2, 40, 60) and target["masks"][1].sum() == 100
    _, empty = dataset[1]  # an image without annotations is a valid, empty target
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 40, 60)
    flipped_image, flipped = hflip(image, target)
    assert flipped["boxes"][1].tolist() == [20.0, 5.0, 30.0, 15.0]
    assert torch.equal(flipped_image[..., 0], image[..., -1])


def test_unusable_annotations_and_missing_images_are_skipped_with_a_count(tmp_path):
    annotations = [box_ann(1, 1, 3, [1, 1, 5, 5]), box_ann(2, 99, 3, [1, 1, 5, 5]), box_ann(3, 2, 5, [1, 1, 5, 5])]
    root = write_coco(tmp_path, annotations=annotations)
    (root / "val" / "3.png").unlink()
    with pytest.warns(UserWarning) as caught:
        dataset = CocoDetection(root, "val", in_chans=1)
    message = str(caught[0].message)
    assert "1 images whose file is missing" in message and "1 annotations of unknown images" in message
    assert "1 annotations of unknown categories" in message
    assert len(dataset) == 2 and dataset[1][1]["labels"].numel() == 0
    outside = [box_ann(1, 1, 3, [70, 50, 5, 5]), box_ann(2, 1, 3, [1, 1, 5, 5])]
    with pytest.warns(UserWarning, match="1 boxes of zero area inside the image"):
        assert CocoDetection(write_coco(tmp_path / "b", annotations=outside), "val")[0][1]["labels"].tolist() == [1]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"images": []}), "needs 'images' and 'categories' lists"),
])
def test_malformed_annotation_files_are_one_line_errors(tmp_path, content, message):
    root = write_coco(tmp_path)
    (root / "annotations" / "instances_val.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        CocoDetection(root, "val")


def test_a_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"D/annotations/instances_<split>.json"):
        CocoDetection(tmp_path, "val2017")


def test_scenes_are_deterministic_and_boxes_come_from_visible_masks(tmp_path):
    from pycocotools import mask as mask_utils
    spec = SceneSpec(canvas=64, max_scale=2.0, train_canvases=6, val_canvases=3)
    first = write_scenes(tmp_path / "a", "synthetic", spec)
    second = write_scenes(tmp_path / "b", "synthetic", spec)
    for split in ("train", "val"):
        a = json.loads((first / "annotations" / f"instances_{split}.json").read_text())
        assert a == json.loads((second / "annotations" / f"instances_{split}.json").read_text())
        for ann in a["annotations"]:
            mask = mask_utils.decode(ann["segmentation"])
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert ann["area"] == mask.sum()
    with pytest.raises(ValueError, match="made with other parameters"):
        write_scenes(tmp_path / "a", "synthetic", SceneSpec(canvas=64, max_scale=2.0, train_canvases=7))


# --- evaluation ----------------------------------------------------------------------------------------------


def test_eval_detections_equals_pycocotools_called_directly(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    annotations = [box_ann(1, 1, 3, [2, 2, 20, 20]), box_ann(2, 1, 42, [30, 10, 20, 25]),
                   box_ann(3, 2, 7, [5, 5, 30, 30]), box_ann(4, 3, 42, [10, 0, 15, 15])]
    root = write_coco(tmp_path, annotations=annotations)
    detections = [dict(image_id=1, category_id=3, bbox=[3, 2, 19, 21], score=0.9),
                  dict(image_id=1, category_id=42, bbox=[28, 12, 22, 20], score=0.8),
                  dict(image_id=1, category_id=7, bbox=[0, 0, 10, 10], score=0.7),   # false positive
                  dict(image_id=2, category_id=7, bbox=[6, 4, 28, 31], score=0.6),
                  dict(image_id=3, category_id=3, bbox=[10, 0, 15, 15], score=0.5)]  # wrong class
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    assert main(["detect", "eval", "--detections", str(tmp_path / "dets.json"), "--data-dir", str(root),
                 "--split", "val", "--output", str(tmp_path / "out")]) == 0
    ours = json.loads((tmp_path / "out" / "eval.json").read_text())
    gt = COCO(str(root / "annotations" / "instances_val.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "dets.json")), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    for name, value in zip(names, evaluator.stats):
        assert ours[f"bbox_{name}"] == (100 * value if value >= 0 else None), name
    assert set(ours["bbox_per_class"]) == {"cat", "dog", "bird"}
    assert "segm_AP" not in ours


def test_empty_results_score_zero():
    import tempfile
    from pathlib import Path

    from patnet.data.coco import load_coco
    root = write_coco(Path(tempfile.mkdtemp()), annotations=[box_ann(1, 1, 3, [2, 2, 20, 20])])
    metrics = evaluate_results(load_coco(root / "annotations" / "instances_val.json"), [], ("bbox",))
    assert metrics["bbox_AP"] == 0.0


@pytest.mark.parametrize("detections, message", [
    ("[{]", "is not valid JSON"),
    (json.dumps([{"image_id": 1}]), "is not a COCO results file"),
    (json.dumps([dict(image_id=77, category_id=3, bbox=[0, 0, 1, 1], score=0.5)]), "not in the annotations"),
])
def test_bad_results_files_are_one_line_errors(tmp_path, capsys, detections, message):
    root = write_coco(tmp_path, annotations=[box_ann(1, 1, 3, [2, 2, 20, 20])])
    (tmp_path / "dets.json").write_text(detections)
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "eval", "--detections", str(tmp_path / "dets.json"), "--data-dir", str(root),
              "--split", "val", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


# --- training, resume, eval and predict through the command line ------------------------------------------

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TRAIN = ["detect", "train", "--dataset", "synthetic", "--backbone", "patnet_t0", "--backbone-kwargs", "embed_dim=16",
         "depths=(1,1,1,1)", "-b", "4", "--min-size", "64", "--max-size", "64", "--fpn-channels", "32",
         "--anchor-sizes", "8", "16", "32", "64", "128", "--warmup-iters", "2", "--lr", "1e-3", "--lr-steps", "2",
         "--epochs", "2", "--detector-kwargs", *(f"{k}={v}" for k, v in SMALL_HEADS.items())]


def last_epoch(run_dir) -> int:
    link = run_dir / "last"
    return int(link.resolve().name.split("-")[1]) if link.exists() else 0


def test_train_sigkill_resume_eval_and_predict(tmp_path, scenes, capsys):
    run_dir = tmp_path / "run"
    args = [*TRAIN, "--data-dir", str(scenes), "--output", str(run_dir)]
    process = subprocess.Popen([sys.executable, "-m", "patnet.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while last_epoch(run_dir) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last_epoch(run_dir) == 1, "the run was not killed during its second epoch"
    resumed = subprocess.run([sys.executable, "-m", "patnet.cli", "detect", "train", "--resume", str(run_dir)],
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 2..2" in resumed.stdout
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and "segm_AP" in history[-1]
    assert (run_dir / "curves.png").is_file()

    assert main(["detect", "eval", "--checkpoint", str(run_dir), "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["bbox_AP"] == pytest.approx(history[-1]["bbox_AP"])
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert detections and all(d["category_id"] in (1, 2, 3, 4) and "segmentation" in d for d in detections)

    image = scenes / "val" / "000001.png"
    assert main(["detect", "predict", str(image), "--checkpoint", str(run_dir), "--score-threshold", "0",
                 "--output", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "000001.png").read_bytes()[:4] == b"\x89PNG"
    predicted = json.loads((tmp_path / "pred" / "detections.json").read_text())
    same_image = [d for d in detections if d["image_id"] == 1]  # eval used the same (last) checkpoint
    assert same_image
    assert [(d["category_id"], d["bbox"]) for d in predicted] == [(d["category_id"], d["bbox"]) for d in same_image]


def test_checkpoint_of_another_kind_or_class_count_is_refused(tmp_path, scenes, capsys):
    from patnet.engine import make_config, train
    train(make_config(model="patnet_t0", model_kwargs=dict(TINY_BACKBONES["patnet_t0"]), dataset="synthetic",
                      img_size=32, epochs=1, batch_size=16, warmup_epochs=0, output=str(tmp_path / "cls")))
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "eval", "--checkpoint", str(tmp_path / "cls"), "--data-dir", str(scenes), "--split", "val"])
    assert exit_info.value.code == 2 and "classification checkpoint" in capsys.readouterr().err
    assert main([*TRAIN, "--epochs", "1", "--lr-steps", "1", "--data-dir", str(scenes),
                 "--output", str(tmp_path / "det")]) == 0
    other = write_coco(tmp_path / "coco", annotations=[box_ann(1, 1, 3, [2, 2, 20, 20])])
    with pytest.raises(SystemExit):
        main(["detect", "eval", "--checkpoint", str(tmp_path / "det"), "--data-dir", str(other), "--split", "val"])
    assert "trained on 4 categories" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["detect", "train", "--resume", str(tmp_path / "det"), "--arch", "retinanet"])
    assert "has arch='maskrcnn' but this run has 'retinanet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["detect", "train", "--resume", str(tmp_path / "det")])
    assert "has already trained 1 epochs; pass --epochs N with N > 1" in capsys.readouterr().err


def test_fpn_backbone_is_what_torchvision_expects():
    model = tiny_detector("maskrcnn", "fasternet_t0")
    assert isinstance(model.backbone, TimmFpnBackbone) and model.backbone.out_channels == 32
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 1, 64, 96))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in features.values()] == [24, 12, 6, 3, 2]
