"""Segmentation data: readers, mask decoding, augmentation correspondence, the
DataModule (folders, volumes, synthetic), sliding-window inference, Dice loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniseq.data.augment import augment_pair, elastic_deform
from omniseq.data.segmentation import (
    SegmentationDataModule,
    make_synthetic_membranes,
    map_mask,
    parse_indices,
    read_image,
)
from omniseq.domains.vision.inference import sliding_window_inference
from omniseq.recipes.segmentation import dice_loss
from tests.conftest import shared_dataset


@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp", ".npy"])
def test_read_image_round_trips(tmp_path, suffix):
    image = (np.arange(12 * 10) % 251).astype(np.uint8).reshape(12, 10)
    path = tmp_path / f"a{suffix}"
    if suffix == ".npy":
        np.save(path, image)
    elif suffix == ".webp":  # WebP stores colour only: an RGB image, losslessly
        image = np.stack([image, image[::-1], 255 - image], axis=-1)
        Image.fromarray(image).save(path, lossless=True)
    else:
        Image.fromarray(image).save(path)
    np.testing.assert_array_equal(read_image(path), image)


def test_multipage_tiff_is_a_stack(tmp_path):
    frames = [Image.fromarray(np.full((4, 5), i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "s.tif", save_all=True, append_images=frames[1:])
    stack = read_image(tmp_path / "s.tif")
    assert stack.shape == (3, 4, 5) and stack[2, 0, 0] == 2


def test_map_mask_value_map_palette_and_errors():
    raw = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(map_mask(raw, 2, value_map={0: 1, 255: 0}), [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"mask values \[3, 255\] are outside classes 0..1"):
        map_mask(np.array([[0, 255], [3, 1]]), 2, ignore_index=-1)
    assert map_mask(np.array([[0, 255]]), 2)[0, 1] == 255  # ignore index kept
    with pytest.raises(ValueError, match="not in value_map"):
        map_mask(raw, 2, value_map={0: 1})
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    np.testing.assert_array_equal(map_mask(rgb, 2, palette=[[0, 0, 0], [255, 0, 0]]), [[0, 1]])
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match="not in the palette"):
        map_mask(rgb, 2, palette=[[0, 0, 0], [255, 0, 0]])
    assert parse_indices("0-2,5", 6) == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="outside"):
        parse_indices("0-9", 5)


@pytest.mark.parametrize("volume", [False, True])
def test_flips_and_rotations_keep_image_and_mask_aligned(volume):
    shape = (4, 6, 6) if volume else (6, 6)
    mask = torch.arange(int(np.prod(shape))).reshape(shape)
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(12):
        image, out = augment_pair(mask[None].float(), mask, gen)
        torch.testing.assert_close(image[0], out.float())
        seen.add(tuple(out.flatten()[:3].tolist()))
    assert len(seen) > 2  # the augmentation actually varies


def test_elastic_deformation_moves_pixels_consistently():
    gen = torch.Generator().manual_seed(0)
    mask = (torch.arange(64)[None, :] // 8 % 2).repeat(64, 1)
    image, out = elastic_deform(mask[None].float(), mask, gen, alpha=4.0, sigma=6.0)
    assert out.shape == mask.shape and set(out.unique().tolist()) <= {0, 1}
    assert not torch.equal(out, mask)
    # Bilinear image vs nearest mask of the same warp agree away from edges.
    assert ((image[0] > 0.5).long() == out).float().mean() > 0.95


def _write_folder(tmp_path, n=4, size=(20, 24), bad=None):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    images, masks = make_synthetic_membranes(n, 24, seed=1)
    for i in range(n):
        img = (images[i][: size[0], : size[1]] * 255).astype(np.uint8)
        lab = np.where(masks[i][: size[0], : size[1]] == 1, 0, 255).astype(np.uint8)
        if bad == "size" and i == 1:
            lab = lab[:-2]
        Image.fromarray(img).save(tmp_path / "image" / f"{i}.png")
        Image.fromarray(lab).save(tmp_path / "label" / f"{i}.png")


def test_datamodule_folder_splits_crops_and_determinism(tmp_path):
    _write_folder(tmp_path)
    kwargs = dict(root=str(tmp_path), train_indices="0-2", test_indices=[3], value_map={0: 1, 255: 0},
                  crop_size=(16, 16), samples_per_epoch=8, batch_size=4)
    dm = SegmentationDataModule(**kwargs)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["mask"].shape == (4, 16, 16)
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    assert dm.datasets["test"][0]["image"].shape == (1, 20, 24)
    # Images stay raw (the model normalises); the statistics are the training pixels' own.
    train_pixels = torch.cat([x.flatten() for x in dm.datasets["train"].images])
    torch.testing.assert_close(dm.mean, train_pixels.mean()[None])
    torch.testing.assert_close(dm.std, train_pixels.std()[None])
    assert abs(float(dm.normalize(train_pixels[None]).mean())) < 1e-5
    again = SegmentationDataModule(**kwargs)
    again.setup()
    torch.testing.assert_close(next(iter(again.train_dataloader()))["image"], batch["image"])


def test_datamodule_errors_name_the_problem(tmp_path):
    _write_folder(tmp_path, bad="size")
    dm = SegmentationDataModule(root=str(tmp_path), value_map={0: 1, 255: 0})
    with pytest.raises(ValueError, match=r"image 1.png has size \(20, 24\) but mask 1.png has \(18, 24\)"):
        dm.setup()
    with pytest.raises(ValueError, match=r"crop_size must be \(T, H, W\)"):
        SegmentationDataModule(volume=True, crop_size=(8, 8))


def test_volume_mode_stacks_sections():
    dm = SegmentationDataModule(synthetic={"n": 8, "size": 32}, volume=True, train_indices="0-5",
                                test_indices="6-7", crop_size=(4, 16, 16), batch_size=2, samples_per_epoch=4)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 1, 4, 16, 16)
    assert dm.datasets["test"][0]["image"].shape == (1, 2, 32, 32)


@pytest.mark.parametrize("shape,window", [((1, 2, 37, 50), (16, 16)), ((2, 1, 5, 19, 23), (4, 8, 8))])
def test_sliding_window_equals_whole_input_for_a_local_model(shape, window):
    conv = torch.nn.Conv2d if len(shape) == 4 else torch.nn.Conv3d
    model = conv(shape[1], 3, 1)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_inference(model, x, window, overlap=0.5), model(x))


def test_dice_loss_known_values():
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 50
    assert dice_loss(perfect, target, 255) < 1e-3
    wrong = perfect.flip(1)
    assert dice_loss(wrong, target, 255) > 0.6


@pytest.mark.slow
def test_isbi2012_loads_with_the_protocol_split():
    shared_dataset("isbi2012_em_membrane/train/image/0.png")
    dm = SegmentationDataModule("isbi2012", train_indices="0-24", val_indices="23-24", test_indices="25-29",
                                value_map={0: 1, 255: 0}, crop_size=(64, 64))
    dm.setup()
    assert len(dm.datasets["train"].images) == 25 and len(dm.datasets["test"]) == 5
    mask = dm.datasets["test"][0]["mask"]
    assert mask.shape == (512, 512)
    # README: 78% of pixels are cell interior (class 0 here).
    assert 0.15 < mask.float().mean() < 0.3


def test_volume_files_with_3d_masks(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / "image" / f"v{i}.npy", rng.random((6, 10, 12)).astype(np.float32))
        np.save(tmp_path / "label" / f"v{i}.npy", rng.integers(0, 3, (6, 10, 12)))
    dm = SegmentationDataModule(str(tmp_path), volume=True, num_classes=3, train_indices="0-1",
                                test_indices=[2], crop_size=(4, 8, 8), batch_size=2, samples_per_epoch=2)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 1, 4, 8, 8)
    assert dm.datasets["test"][0]["mask"].shape == (6, 10, 12)
