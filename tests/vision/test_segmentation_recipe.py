"""Segmentation recipe end to end (CLI fit/test/predict, checkpoint reload) and api.Segmenter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseq.api.segmenter import Segmenter
from omniseq.recipes.cli import build_cli, list_recipes, main, resolve_config_args
from omniseq.recipes.segmentation import SegmentationTask

RECIPES = ["segmentation/demo_synthetic_vig"] + [
    f"segmentation/isbi2012_{m}" for m in ("vig_tiny", "vim_tiny", "deit_tiny", "swin_tiny", "3d_swin_unetr")
]


def test_recipes_are_packaged_and_build():
    assert set(RECIPES) <= set(list_recipes())
    expected = {
        "vig_tiny": "vig_tiny_patch16_224", "vim_tiny": "vim_tiny_patch16_224",
        "deit_tiny": "omni_deit_tiny_patch16_224", "swin_tiny": "omni_swin_tiny_patch4_window7_224",
        "3d_swin_unetr": "swin3d_unetr_tiny",
    }
    for recipe in RECIPES[1:]:
        cli = build_cli(["--config", resolve_config_args(["--config", recipe])[1]], run=False)
        net = cli.model.backbone
        assert cli.datamodule.hparams.test_indices == "25-29"
        assert cli.model.class_names == ["interior", "membrane"] and cli.model.num_classes == 2
        assert net.ndim == (3 if "3d" in recipe else 2), recipe
        assert net.encoder.pretrained_cfg["architecture"] == expected[recipe.split("isbi2012_")[1]]


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", "segmentation/demo_synthetic_vig",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.samples_per_epoch", "8",
        "--data.synthetic", "{n: 6, size: 64}",
        "--model.backbone.backbone_options", "{depth: 2, img_size: 64}",
        "--model.window", "[64, 64]",
        *extra,
    ]


@pytest.mark.slow
def test_cli_fit_test_predict_and_reload(tmp_path):
    main(["fit", *tiny_args(tmp_path)])
    rows = list(csv.DictReader(open(next(tmp_path.glob("logs/*/metrics.csv")))))
    tested = [r for r in rows if r.get("test/miou")]
    assert tested and 0 <= float(tested[-1]["test/miou"]) <= 1
    assert float(tested[-1]["test/pixel_acc"]) > 0.5
    best = tmp_path / "checkpoints" / "best.ckpt"
    task = SegmentationTask.load_from_checkpoint(best)
    assert task.backbone.encoder is not None
    main(["predict", *tiny_args(tmp_path), "--ckpt_path", str(best)])
    overlays = sorted((tmp_path / "overlays").glob("synthetic_*.png"))  # named after the test images
    assert [p.stem for p in overlays] == ["synthetic_4", "synthetic_5"]
    height, width, _ = np.asarray(Image.open(overlays[0])).shape
    assert width == 64 and height > 64  # the image at its size, a legend below
    with pytest.raises(FileExistsError, match=r"overlay\(s\) already exist, e\.g\. .*synthetic_4\.png"):
        main(["predict", *tiny_args(tmp_path), "--ckpt_path", str(best)])


@pytest.mark.slow
def test_segmenter_fit_predict_save_load_plot(tmp_path):
    seg = Segmenter("vig_tiny_patch16_224", num_classes=2, in_chans=1, window=(48, 48),
                    backbone_options={"depth": 2, "img_size": 48})
    seg.fit(max_steps=4, synthetic={"n": 4, "size": 48}, crop_size=(48, 48), samples_per_epoch=8)
    image = np.random.default_rng(0).random((70, 50)).astype(np.float32)
    mask = seg.predict(image)
    assert mask.shape == (70, 50) and set(np.unique(mask)) <= {0, 1}
    seg.save(tmp_path / "seg.pt")
    again = Segmenter.load(tmp_path / "seg.pt")
    np.testing.assert_array_equal(again.predict(image), mask)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "x.png")
    assert seg.predict(tmp_path / "x.png").shape == (70, 50)
    with pytest.raises(ValueError, match="1 channel"):
        seg.predict(np.zeros((2, 3, 8, 8)))
    import matplotlib

    matplotlib.use("Agg")
    assert seg.plot(image, mask) is not None


@pytest.mark.slow
def test_segmenter_3d_volume():
    seg = Segmenter("swin3d_unetr_tiny", num_classes=2, in_chans=1, window=(4, 32, 32),
                    backbone_options={"depths": (1, 1, 1, 1)})
    volume = torch.rand(6, 40, 36).numpy()
    assert seg.predict(volume).shape == (6, 40, 36)
