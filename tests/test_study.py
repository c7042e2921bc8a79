"""The Fashion-MNIST study's machinery on the synthetic set: runs, skip and resume, report, subsets, estimate."""
import json
import statistics
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch

from patnet import study
from patnet.cli import main
from patnet.data import fashion_mnist, write_idx, write_train_subset
from patnet.data.datasets import FASHION_MNIST_FILES
from patnet.engine import trainer
from patnet.flops import count_params

# Every study variant, on 128 synthetic 32x32 images for two epochs: seconds, not minutes.
TINY = replace(study.PLANS["quick"], name="tiny", train_subset=None, latency_warmup=1, latency_iters=4,
               recipe=dict(dataset="synthetic", img_size=32, batch_size=16, epochs=2, lr=5e-3, warmup_epochs=0,
                           smoothing=0.0, hflip=0.0))


def quiet(*args, **kwargs):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    results = study.run_study(TINY, root / "out", root / "report", "patnet study (tiny)", log=quiet)
    return root, results


def test_the_report_is_computed_from_the_runs_metrics(tiny_study):
    root, results = tiny_study
    assert [row["key"] for row in results["rows"]] == [v.key for v in study.VARIANTS]
    for row in results["rows"]:
        seeds = TINY.headline_seeds if row["key"] in study.HEADLINE else TINY.ablation_seeds
        assert row["seeds"] == list(range(seeds))
        final = [json.loads((root / "out" / "runs" / row["key"] / f"seed{s}" / "metrics.json").read_text())[-1]
                 for s in row["seeds"]]
        assert [f["epoch"] for f in final] == [2] * seeds
        assert row["top1"] == [f["top1"] for f in final]
        assert row["top1_mean"] == pytest.approx(statistics.fmean(row["top1"]))
        assert row["top1_std"] == (pytest.approx(statistics.stdev(row["top1"])) if seeds > 1 else None)
    saved = json.loads((root / "report" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    markdown = (root / "report" / "results.md").read_text()
    assert results["test_images"] == 128 and "on the 128 test images" in markdown
    assert "`patnet study (tiny)`" in markdown and all(v.label in markdown for v in study.VARIANTS)
    assert (root / "report" / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_sizes_and_latency_are_the_trained_models(tiny_study):
    _, results = tiny_study
    for row in results["rows"]:
        model = timm.create_model(row["model"], num_classes=4, in_chans=1, **row["model_kwargs"])
        assert row["params"] == count_params(model)
        assert row["macs"] > 0 and row["latency_ms"] > 0 and row["input_size"] == [1, 32, 32]
    rows = {row["key"]: row for row in results["rows"]}
    # The ratio is the median of per-round ratios, inside its own p10-p90 (timing itself varies with load).
    patnet = rows[study.PATNET]
    assert 0 < patnet["ratio_p10"] <= patnet["ratio"] <= patnet["ratio_p90"]
    assert rows[study.BASELINE]["ratio"] == 1.0
    assert rows["patnet_t0_sp"]["params"] > rows[study.PATNET]["params"]  # PAT_sp adds a conv per block
    assert rows["patnet_t0_pconv"]["macs"] < rows[study.PATNET]["macs"]  # no attention, no statistics branch


def test_findings_compare_patnet_with_fasternet_and_each_ablation(tiny_study):
    _, results = tiny_study
    rows = {row["key"]: row for row in results["rows"]}
    lines = study.findings(results)
    gap = rows[study.PATNET]["top1_mean"] - rows[study.BASELINE]["top1_mean"]
    assert lines[0].startswith(f"PATNet-T0 minus FasterNet-T0: {gap:+.2f} points")
    assert len(lines) == 2 + 3


def test_a_second_invocation_trains_nothing_and_logs_both(tiny_study, monkeypatch):
    root, results = tiny_study

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study.runner, "train", no_training)
    again = study.run_study(TINY, root / "out", root / "report", "again", log=quiet)
    assert [row["top1"] for row in again["rows"]] == [row["top1"] for row in results["rows"]]
    assert [i["epochs_trained"] for i in again["invocations"]] == [2 * 7, 0]
    assert again["wall_s"] == pytest.approx(sum(i["wall_s"] for i in again["invocations"]))


def test_a_run_with_another_recipe_is_refused(tiny_study):
    root, _ = tiny_study
    changed = replace(TINY, recipe={**TINY.recipe, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"seed0 was trained with lr=0.005 but the study's recipe has 0.001"):
        study.run_study(changed, root / "out", root / "report2", "changed", log=quiet)


def test_an_interrupted_run_is_resumed_from_its_last_epoch(tmp_path, monkeypatch):
    plan = replace(TINY, variants=study.VARIANTS[:1], headline_seeds=1)
    original = trainer.Run.train_one_epoch

    def interrupted(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(trainer.Run, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(plan, tmp_path / "out", tmp_path / "report", "first", log=quiet)
    monkeypatch.undo()
    [run] = study.plan_runs(plan, tmp_path / "out")
    assert study.saved_state(run)["epoch"] == 1

    calls = []
    real_train = study.runner.train
    monkeypatch.setattr(study.runner, "train",
                        lambda config, resume=None: calls.append(resume) or real_train(config, resume))
    results = study.run_study(plan, tmp_path / "out", tmp_path / "report", "second", log=quiet)
    assert calls == [run.dir]
    assert [row["epoch"] for row in study.saved_state(run)["history"]] == [1, 2]
    assert results["invocations"][0]["epochs_trained"] == 1  # only the interrupted invocation is not logged


def test_a_training_subset_keeps_chosen_images_with_their_labels_and_the_whole_test_set(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "source"
    source.mkdir()
    arrays = {"train": (rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50)),
              "val": (rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20))}
    for split, (images, labels) in arrays.items():
        image_file, label_file = FASHION_MNIST_FILES[split]
        write_idx(source / image_file, images)
        write_idx(source / label_file, labels)
    dest = write_train_subset(tmp_path / "subset", 10, source)
    train, test = fashion_mnist("train", dest), fashion_mnist("val", dest)
    assert len(train) == 10 and len(np.unique(train.images.reshape(10, -1), axis=0)) == 10
    for image, label in zip(train.images, train.labels):
        index = next(i for i, candidate in enumerate(arrays["train"][0]) if np.array_equal(candidate, image))
        assert label == arrays["train"][1][index]
    assert np.array_equal(test.images, arrays["val"][0]) and np.array_equal(test.labels, arrays["val"][1])
    with pytest.raises(ValueError, match="1 to 50 images, got 51"):
        write_train_subset(tmp_path / "too-many", 51, source)


def test_the_full_study_estimate_scales_each_variants_epoch_to_the_whole_training_set():
    quick = replace(study.PLANS["quick"], train_subset=12800, recipe={**study.RECIPE, "batch_size": 128})
    full = replace(study.PLANS["full"], recipe={**study.RECIPE, "batch_size": 128, "epochs": 4})
    rows = [dict(key=study.BASELINE, train_images_per_s=400.0, epoch_s=12800 / 400 + 10),
            dict(key="patnet_t0_sp", train_images_per_s=200.0, epoch_s=12800 / 200 + 20)]
    used = 60000 // 128 * 128
    expected = 3 * 4 * (used / 400 + 10) + 1 * 4 * (used / 200 + 20)
    assert study.estimate_full_s(rows, quick, full) == pytest.approx(expected)


def test_the_command_refuses_a_file_as_output_directory(tmp_path, capsys):
    path = tmp_path / "a-file"
    path.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--quick", "--output", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"patnet study: error: --output {path} is a file; pass a directory"


def test_at_the_studys_resolution_the_last_stage_keeps_2x2_tokens():
    size = study.RECIPE["img_size"]
    for variant in study.VARIANTS:
        model = timm.create_model(variant.model, num_classes=10, in_chans=1, **variant.model_kwargs).eval()
        with torch.no_grad():
            assert model.forward_features(torch.zeros(1, 1, size, size)).shape[-2:] == (2, 2), variant.key


def test_a_quick_report_states_the_full_studys_estimated_time(tiny_study):
    _, results = tiny_study
    epochs = study.PLANS["full"].recipe["epochs"]
    markdown = study.to_markdown({**results, "estimate_full_s": epochs * 754.0})
    assert "takes about 12 min 34 s, so `patnet study`" in markdown
    assert f"({epochs} epochs) would train for about" in markdown


def test_a_holdout_split_evaluates_on_training_images_the_subset_does_not_use(tmp_path):
    rng = np.random.default_rng(2)
    source = tmp_path / "source"
    source.mkdir()
    images = np.arange(40)[:, None, None] * np.ones((1, 28, 28), dtype=np.int64)  # image i is filled with i
    for split, (split_images, labels) in {"train": (images, np.arange(40) % 10),
                                          "val": (rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5))}.items():
        image_file, label_file = FASHION_MNIST_FILES[split]
        write_idx(source / image_file, split_images)
        write_idx(source / label_file, labels)
    dest = write_train_subset(tmp_path / "split", 20, source, holdout=15)
    train, held_out = fashion_mnist("train", dest), fashion_mnist("val", dest)
    train_ids, held_ids = set(train.images[:, 0, 0].tolist()), set(held_out.images[:, 0, 0].tolist())
    assert len(train_ids) == 20 and len(held_ids) == 15 and not train_ids & held_ids
    assert all(label == image_id % 10 for image_id, label in zip(held_out.images[:, 0, 0], held_out.labels))
    with pytest.raises(ValueError, match="1 to 25 images, got 26"):
        write_train_subset(tmp_path / "too-many", 26, source, holdout=15)


def test_tuning_trains_the_grid_for_both_families_and_picks_the_best_mean(tmp_path, monkeypatch):
    tuning = study.Tuning(TINY.recipe, lrs=(1e-3, 5e-3), no_aug=(True,), epochs=1, warmup_epochs=0.0,
                          train_images=None)
    results = study.run_tuning(tuning, tmp_path / "out", tmp_path / "report", "patnet study --tune (tiny)",
                               log=quiet)
    pairs = study.tuning_runs(tuning, tmp_path / "out")
    assert len(pairs) == 4 and results["epochs_trained"] == 4
    for setting, run in pairs:
        assert (run.config.lr, run.config.no_aug, run.config.epochs) == (setting["lr"], True, 1)
        row = next(r for r in results["rows"] if r["lr"] == setting["lr"])
        final = json.loads((run.dir / "metrics.json").read_text())[-1]["top1"]
        assert row["top1"][run.variant.key] == final
    best = max(results["rows"], key=lambda row: row["mean"])
    assert results["best"] == dict(lr=best["lr"], no_aug=True)
    markdown = (tmp_path / "report" / "results.md").read_text()
    assert f"**{study.setting_name(results['best'])}**" in markdown and "FasterNet-T0 (timm) (%)" in markdown

    monkeypatch.setattr(study.runner, "train", lambda *a, **k: pytest.fail("a finished tuning run was trained again"))
    again = study.run_tuning(tuning, tmp_path / "out", tmp_path / "report", "again", log=quiet)
    assert again["rows"] == results["rows"] and again["epochs_trained"] == 0


def test_quick_and_tune_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--quick", "--tune"])
    assert exit_info.value.code == 2
    assert "--quick and --tune are different jobs" in capsys.readouterr().err
