"""Unusual but legal segmentation inputs (issue 14, section 3): each gives the right result or
an error naming the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseq.api import Segmenter
from omniseq.data.segmentation import SegmentationDataModule

TINY_VIG = {"depth": 2, "img_size": 32, "embed_dim": 32, "num_heads": 2}
RNG = np.random.default_rng(0)
GRAY8 = (RNG.random((32, 32)) * 255).astype(np.uint8)
MASK = (RNG.random((32, 32)) > 0.5).astype(np.uint8)


def write(folder: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def datamodule(root: Path, **options) -> SegmentationDataModule:
    return SegmentationDataModule(str(root), **{"crop_size": (16, 16), "samples_per_epoch": 4, "batch_size": 2,
                                                 **options})


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter("vig_tiny_patch16_224", num_classes=2, in_chans=1, window=(32, 32), backbone_options=TINY_VIG)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_16_bit_and_integer_images_are_scaled_alike_in_fit_and_predict(tmp_path, segmenter, dtype):
    pixels = (GRAY8.astype(np.int64) * 257).astype(dtype)  # a 16-bit export of GRAY8
    suffix = ".png" if dtype == np.uint16 else ".npy"
    for i in range(3):
        path = write(tmp_path / "image", f"{i}{suffix}", pixels)
        write(tmp_path / "label", f"{i}.png", MASK)
    seen_in_fit = datamodule(tmp_path).split_dataset("test")[0]["image"]
    seen_in_predict = segmenter._prepare(path)[0]
    torch.testing.assert_close(seen_in_predict, seen_in_fit)  # one scaling function for both
    if dtype == np.uint16:  # 16 bits scale to [0, 1] as 8 bits do: the same picture gives the same input
        torch.testing.assert_close(seen_in_fit, torch.from_numpy(GRAY8 / 255.0).float()[None])
        np.testing.assert_array_equal(segmenter.predict(path), segmenter.predict(GRAY8))


def test_images_and_masks_are_paired_by_name(tmp_path):
    for name in ("a", "b", "c"):
        write(tmp_path / "image", f"{name}.png", GRAY8)
    for name in ("a", "c", "d"):
        write(tmp_path / "label", f"{name}.png", MASK)
    with pytest.raises(ValueError, match=r"paired by file name .* image\(s\) \['b\.png'\] have no mask, "
                                         r"mask\(s\) \['d\.png'\] have no image; rename or remove them"):
        datamodule(tmp_path).setup()


def test_pairs_follow_names_not_sort_order(tmp_path):
    # Images are jpg-named "1, 2, 10"; masks "1, 10, 2" sort differently as text but pair by name.
    for i, value in ((1, 10), (2, 20), (10, 100)):
        write(tmp_path / "image", f"{i}.npy", np.full((20, 20), value, np.float32))
        write(tmp_path / "label", f"{i}.npy", np.full((20, 20), int(value == 100), np.int64))
    test = datamodule(tmp_path, train_indices="0-1", test_indices=[2]).split_dataset("test")[0]
    assert test["name"] == "10" and float(test["image"].mean()) == 100 and int(test["mask"].min()) == 1


def test_images_smaller_than_the_crop_are_padded(tmp_path):
    write(tmp_path / "image", "0.png", GRAY8[:10, :12])  # smaller than the 16x16 crop
    write(tmp_path / "label", "0.png", MASK[:10, :12])
    write(tmp_path / "image", "1.png", GRAY8)
    write(tmp_path / "label", "1.png", MASK)
    dm = datamodule(tmp_path, train_indices="0-1", test_indices=[], samples_per_epoch=8)
    dm.setup("fit")
    for batch in dm.train_dataloader():  # a whole epoch: no size mismatch mid-epoch
        assert batch["image"].shape == (2, 1, 16, 16) and batch["mask"].shape == (2, 16, 16)
    image, mask = dm.datasets["train"].images[0], dm.datasets["train"].masks[0]
    assert image.shape == (1, 16, 16) and (mask[10:] == 255).all() and (mask[:, 12:] == 255).all()
    torch.testing.assert_close(image[0, 12:, 14:], dm.mean.expand(4, 2))  # padded with the training mean
    np.testing.assert_array_equal(mask[:10, :12].numpy(), MASK[:10, :12])


@pytest.mark.parametrize(("array", "mode", "band"), [
    (np.dstack([GRAY8] * 3 + [np.full_like(GRAY8, 255)]), "RGBA", "alpha is band 4 of 4"),
    (np.dstack([GRAY8, np.full_like(GRAY8, 255)]), "LA", "alpha is band 2 of 2"),
])
def test_images_with_alpha_are_refused_naming_the_file(tmp_path, segmenter, array, mode, band):
    for i in range(3):
        path = write(tmp_path / "image", f"{i}.png", array, mode)
        write(tmp_path / "label", f"{i}.png", MASK)
    expected = rf"0\.png: the image has an alpha channel \(PIL mode {mode}.*{band}.*convert\('"
    with pytest.raises(ValueError, match=expected):
        datamodule(tmp_path).setup()
    with pytest.raises(ValueError, match=rf"{path.name}: the image has an alpha channel"):
        segmenter.predict(path)


@pytest.mark.parametrize("shape", [(1, 1), (3, 50)])
def test_tiny_images_are_padded_and_predicted(segmenter, shape):
    image = RNG.random(shape).astype(np.float32)
    mask = segmenter.predict(image)
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 1}
    # Padding happens in normalised space with zeros (the training mean): the prediction of the
    # corner equals that of the image padded with the mean by hand.
    padded = np.full((max(shape[0], 32), max(shape[1], 32)), float(segmenter.mean[0]), np.float32)
    padded[: shape[0], : shape[1]] = image
    np.testing.assert_array_equal(segmenter.predict(padded)[: shape[0], : shape[1]], mask)
