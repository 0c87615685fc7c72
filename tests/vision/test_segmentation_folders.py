"""Fine-tuning on a user's own folders (issue 17): per-split folders, settings that follow the
data, the training normalisation stored in the checkpoint, one path from `omniseq fit` to
`Segmenter.from_checkpoint` and `omniseq predict`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseq.api.segmenter import Segmenter
from omniseq.data.segmentation import SegmentationDataModule, scale_pixels
from omniseq.recipes.checkpoints import read_checkpoint
from omniseq.recipes.cli import main
from omniseq.recipes.segmentation import save_overlay

CLASSES = ["background", "square", "disc"]
TINY = "{depth: 2, embed_dim: 32, num_heads: 2}"


def scene(rng: np.random.Generator, size: tuple[int, int], brightness: float) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture with a bright square (class 1) and a dark disc (class 2); a void border (255)."""
    h, w = size
    image = rng.normal(0.5 * brightness, 0.05, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(2, h - 14), rng.integers(2, w - 14)
    mask[y : y + 10, x : x + 10] = 1
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.integers(6, h - 6), rng.integers(6, w - 6)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 20] = 2
    image[mask == 1] += 0.35
    image[mask == 2] -= 0.3
    mask[0, :] = 255
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def write_dataset(root: Path, splits: dict[str, int], brightness: float = 1.0, masks: bool = True) -> dict:
    """``root/<split>/images/<split>_<i>.png`` (+ ``masks/``); returns the images per split."""
    rng = np.random.default_rng(len(str(root)))
    written = {}
    for split, n in splits.items():
        written[split] = []
        for i in range(n):
            image, mask = scene(rng, (40 + 4 * i, 48), brightness)
            name = f"{split}_{i}"
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / "images" / f"{name}.png")
            if masks:
                (root / split / "masks").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / split / "masks" / f"{name}.png")
            written[split].append(image)
    return written


def cli_args(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        "--config", "segmentation/folders_vig_tiny", "--data.root", str(root),
        "--data.class_names", f"[{', '.join(CLASSES)}]", "--data.crop_size", "[32, 32]",
        "--data.samples_per_epoch", "8", "--model.backbone.backbone_options", TINY,
        "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", *extra,
    ]


def test_datamodule_reads_per_split_folders(tmp_path):
    write_dataset(tmp_path, {"train": 3, "val": 2, "test": 2})
    dm = SegmentationDataModule(str(tmp_path), image_dir="images", mask_dir="masks", class_names=CLASSES,
                                crop_size=(32, 32))
    assert dm.split_folders and dm.has_test_split and dm.num_classes == 3 and dm.probe_channels() == 3
    dm.setup("fit")
    assert dm.split_dataset("val").names == ["val_0", "val_1"]
    assert dm.split_dataset("test").names == ["test_0", "test_1"]
    only_test = tmp_path / "only_test"  # test/predict read their split only: no train/ is needed
    write_dataset(only_test, {"test": 2})
    other = SegmentationDataModule(str(only_test), image_dir="images", mask_dir="masks", class_names=CLASSES)
    other.setup("test")
    assert other.mean is None and other.split_dataset("test").names == ["test_0", "test_1"]
    with pytest.raises(ValueError, match=r"holds per-split folders .* so test_indices cannot be used"):
        SegmentationDataModule(str(tmp_path), image_dir="images", mask_dir="masks", test_indices="0").setup()


@pytest.mark.slow
def test_fit_on_folders_then_from_checkpoint_and_cli_predict(tmp_path):
    data, run = tmp_path / "mydata", tmp_path / "run"
    images = write_dataset(data, {"train": 3, "val": 2, "test": 2})
    my_data = tmp_path / "my_data.yaml"  # as in the README: the data stated once, in a YAML of one's own
    my_data.write_text(f"data:\n  init_args:\n    root: {data}\n    class_names: [{', '.join(CLASSES)}]\n"
                       "    ignore_index: 255\n    crop_size: [32, 32]\n")
    main(["fit", "--config", "segmentation/folders_vig_tiny", "--config", str(my_data), *cli_args(data, run)[8:]])

    # The stored normalisation is the training images' own (the oracle: numpy over train/).
    train_pixels = np.concatenate([im.reshape(-1, 3) for im in images["train"]]) / 255.0
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = read_checkpoint(best)
    np.testing.assert_allclose(checkpoint["state_dict"]["pixel_mean"], train_pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(checkpoint["state_dict"]["pixel_std"], train_pixels.std(0, ddof=1), rtol=1e-4)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["num_classes"] == 3 and hparams["class_names"] == CLASSES and list(hparams["window"]) == [32, 32]
    net = hparams["backbone"]["init_args"]
    assert net["in_chans"] == 3 and net["num_classes"] == 3 and net["backbone_options"]["img_size"] == 32

    # Fit validated on val/ and tested on test/; per-class keys carry names, in class order.
    rows = list(csv.DictReader(open(next(run.glob("logs/*/metrics.csv")))))
    columns = list(rows[0])
    assert [c for c in columns if c.startswith("test/dice_class")] == [
        "test/dice_class0_background", "test/dice_class1_square", "test/dice_class2_disc"]
    assert any(r.get("val/miou") for r in rows) and any(r.get("test/miou") for r in rows)

    # One path to the API: any size, the stored normalisation, the same masks as the task.
    seg = Segmenter.from_checkpoint(best)
    torch.testing.assert_close(seg.mean, torch.tensor(train_pixels.mean(0), dtype=torch.float32))
    for shape in [(37, 53), (1, 1)]:
        picture = (np.random.default_rng(1).random((*shape, 3)) * 255).astype(np.uint8)
        assert seg.predict(picture).shape == shape
    import matplotlib

    matplotlib.use("Agg")
    legend = seg.plot(picture).get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0 background", "1 square", "2 disc"]

    # `omniseq predict` on another folder (no train/ there to recompute anything from) writes
    # <its default_root_dir>/overlays/<image>.png, equal to what Segmenter predicts.
    other, out = tmp_path / "other", tmp_path / "predict_run"
    others = write_dataset(other, {"train": 1, "test": 2}, brightness=0.6, masks=False)
    (other / "train").rename(other / "unused")  # a folder of test images only
    main(["predict", *cli_args(other, out), "--data.root", str(other), "--data.predict_images",
          str(other / "test" / "images"), "--ckpt_path", str(best)])
    written = sorted(p.name for p in (out / "overlays").iterdir())
    assert written == ["test_0.png", "test_1.png"] and not (run / "overlays").exists()
    expected = tmp_path / "expected.png"
    picture = others["test"][1]
    save_overlay(scale_pixels(picture).movedim(-1, 0), torch.from_numpy(seg.predict(picture)), expected, 3, CLASSES)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "overlays" / "test_1.png")),
                                  np.asarray(Image.open(expected)))
    with pytest.raises(FileExistsError, match=r"test_0\.png"):
        main(["predict", *cli_args(other, out), "--data.predict_images", str(other / "test" / "images"),
              "--ckpt_path", str(best)])


def test_without_a_test_split_fit_says_so_and_tests_nothing(tmp_path, caplog):
    data, run = tmp_path / "mydata", tmp_path / "run"
    write_dataset(data, {"train": 3, "val": 1})
    with caplog.at_level("INFO"):
        main(["fit", *cli_args(data, run)])
    assert "no test split" in caplog.text
    rows = list(csv.DictReader(open(next(run.glob("logs/*/metrics.csv")))))
    assert not any(k.startswith("test/") for k in rows[0])


def test_settings_given_twice_must_agree(tmp_path):
    write_dataset(tmp_path / "d", {"train": 2})
    with pytest.raises(ValueError, match=r"model window \[48, 48\] differs from data crop_size \[32, 32\]"):
        main(["fit", *cli_args(tmp_path / "d", tmp_path / "run", "--model.window", "[48, 48]")])
    with pytest.raises(ValueError, match=r"img_size 64 differs from data crop_size \[32, 32\]"):
        main(["fit", *cli_args(tmp_path / "d", tmp_path / "run", "--model.backbone.backbone_options",
                                "{depth: 2, embed_dim: 32, num_heads: 2, img_size: 64}")])
    with pytest.raises(ValueError, match=r"class_names has 3 names but num_classes=2"):
        SegmentationDataModule(str(tmp_path / "d"), class_names=CLASSES, num_classes=2)


def test_saved_files_of_the_previous_layout_keep_their_normalisation(tmp_path):
    seg = Segmenter("vig_tiny_patch16_224", num_classes=2, in_chans=1, window=(32, 32),
                    backbone_options={"depth": 2, "img_size": 32, "embed_dim": 32, "num_heads": 2})
    seg.task.set_normalization(torch.tensor([0.3]), torch.tensor([0.2]))
    seg.save(tmp_path / "new.pt")
    blob = torch.load(tmp_path / "new.pt", weights_only=True)
    assert blob["mean"].tolist() == pytest.approx([0.3]) and blob["state_dict"]["pixel_std"].tolist() == pytest.approx([0.2])
    # Files written before the model held its normalisation kept it beside the state dict only.
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if not k.startswith("pixel_")}
    torch.save(blob, tmp_path / "old.pt")
    again = Segmenter.load(tmp_path / "old.pt")
    torch.testing.assert_close(again.mean, torch.tensor([0.3]))
    torch.testing.assert_close(again.std, torch.tensor([0.2]))
    image = np.random.default_rng(0).random((40, 36)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(image), seg.predict(image))


def test_pretrained_weights_load_into_the_segmentation_encoder(tmp_path):
    import timm

    official = timm.create_model("deit_tiny_patch16_224").state_dict()  # timm's layout and names
    torch.save(official, tmp_path / "deit_tiny.pth")
    from omniseq.domains.vision import SegmentationNet

    net = SegmentationNet("omni_deit_tiny_patch16_224", 3, in_chans=1, backbone_options={
        "pretrained": True, "pretrained_cfg_overlay": {"file": str(tmp_path / "deit_tiny.pth")}, "img_size": 32})
    mine = net.encoder.state_dict()
    torch.testing.assert_close(mine["model.blocks.5.mixer.qkv.weight"], official["blocks.5.attn.qkv.weight"])
    # Gray images: the RGB patch embedding is summed over its colour channels (timm's adapt_input_conv).
    torch.testing.assert_close(mine["model.patch_embed.proj.weight"][:, 0], official["patch_embed.proj.weight"].sum(1))


@pytest.mark.slow
def test_fine_tuned_checkpoint_predicts_without_the_pretrained_file(tmp_path):
    import timm

    data, run, weights = tmp_path / "mydata", tmp_path / "run", tmp_path / "deit_tiny.pth"
    write_dataset(data, {"train": 2, "val": 1})
    torch.save(timm.create_model("deit_tiny_patch16_224", depth=2).state_dict(), weights)  # a 2-block DeiT-T
    options = f"{{depth: 2, pretrained: true, pretrained_cfg_overlay: {{file: {weights}}}}}"
    args = cli_args(data, run, "--model.backbone.backbone", "omni_deit_tiny_patch16_224",
                    "--model.backbone.backbone_options", options)
    main(["fit", *args])
    weights.unlink()  # the checkpoint holds the fine-tuned weights; the file it started from is not needed
    best = run / "checkpoints" / "best.ckpt"
    assert Segmenter.from_checkpoint(best).predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)
    from omniseq.recipes.segmentation import SegmentationTask

    assert SegmentationTask.load_from_checkpoint(best).backbone.in_chans == 3
    main(["predict", *args, "--data.predict_images", str(data / "val" / "images"),
          "--trainer.default_root_dir", str(tmp_path / "out"), "--ckpt_path", str(best)])
    assert [p.name for p in (tmp_path / "out" / "overlays").iterdir()] == ["val_0.png"]
