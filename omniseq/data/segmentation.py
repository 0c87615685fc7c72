"""Segmentation data: folders of images and masks (2D), stacks as 3D volumes,
and a built-in synthetic membrane dataset so recipes run with no download.

Images: PNG, TIFF (multi-page = a stack), WebP, or ``.npy``. Masks: class
indices, raw values mapped by ``value_map`` (e.g. ISBI's 0 = membrane, 255 =
interior), or RGB palette colours; ``ignore_index`` marks pixels to skip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from omniseq.data.augment import EpochTaggedSampler, augment_pair, random_crop, sample_generator
from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import DatasetInfo, get_dataset_info, register_dataset, resolve_dataset

__all__ = [
    "SegmentationDataModule",
    "check_finite",
    "make_synthetic_membranes",
    "map_mask",
    "parse_indices",
    "read_image",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".npy", ".jpg", ".jpeg", ".bmp")

register_dataset(
    DatasetInfo(
        name="isbi2012",
        url="https://github.com/zhixuhao/unet (data/membrane), from the ISBI 2012 EM challenge",
        sha256="3f6d8ad2f8b887a4724d50f2eb2fdbf2edf03542f52d97f9732f3c74499b569c",
        filename="README.md",
        folder="isbi2012_em_membrane",
        description="ISBI 2012 EM membranes: 30 labelled 512x512 sections (train/image, train/label)",
    )
)


def read_image(path: str | Path) -> np.ndarray:
    """An image ``(H, W)`` / ``(H, W, C)``, or a stack ``(T, H, W[, C])`` for multi-page TIFF / 3D ``.npy``.

    A missing file raises FileNotFoundError; a truncated, corrupt or non-image file ValueError,
    both naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    expected = f"expected one of {', '.join(IMAGE_SUFFIXES)}"
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err}); is the file complete?") from err
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            frames = [np.asarray(f.copy()) for f in ImageSequence.Iterator(image)]
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not a recognised image file; {expected}") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports truncation and bad chunks this way
        raise ValueError(f"{path}: the image file is truncated or corrupt ({err}); re-export it") from err
    return frames[0] if len(frames) == 1 else np.stack(frames)


def check_finite(image: np.ndarray, source: str) -> None:
    """Refuse NaN / inf pixels, naming the first one (integer images cannot hold them)."""
    if not np.issubdtype(image.dtype, np.floating):
        return
    bad = ~np.isfinite(image)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{source}: {int(bad.sum())} NaN or infinite pixel value(s), the first at index {where}; "
            "images must hold finite numbers (fill or mask them before use)"
        )


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def parse_indices(spec: str | Sequence[int] | None, n: int) -> list[int]:
    """``"0-24"``, ``"0-19,22"``, a list, or None (all) -> sorted indices below ``n``."""
    if spec is None:
        return list(range(n))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    else:
        out = [int(i) for i in spec]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"indices {bad} are outside the {n} available images")
    return out


def map_mask(
    raw: np.ndarray,
    num_classes: int,
    value_map: dict | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int = 255,
    source: str = "mask",
) -> np.ndarray:
    """Raw mask -> class indices ``(..spatial)`` int64, with ``ignore_index`` kept.

    Raises ValueError naming the values that are neither a class nor ignore_index.
    """
    if palette is not None:
        if raw.ndim < 3 or raw.shape[-1] < 3:
            raise ValueError(f"{source}: a palette mask must be RGB (H, W, 3), got {raw.shape}")
        out = np.full(raw.shape[:-1], -1, dtype=np.int64)
        for cls, colour in enumerate(palette):
            out[np.all(raw[..., :3] == np.asarray(colour)[:3], axis=-1)] = cls
        if (out < 0).any():
            colours = np.unique(raw[..., :3][out < 0].reshape(-1, 3), axis=0)[:5].tolist()
            raise ValueError(f"{source}: colours {colours} are not in the palette {list(palette)}")
        return out
    values = raw.astype(np.int64)
    if value_map is not None:
        lut = {int(k): int(v) for k, v in value_map.items()}
        out = np.full(values.shape, -1, dtype=np.int64)
        for k, v in lut.items():
            out[values == k] = v
        unknown = np.unique(values[out < 0])
        if unknown.size:
            raise ValueError(f"{source}: mask values {unknown[:10].tolist()} are not in value_map {lut}")
        values = out
    bad = np.unique(values[(values != ignore_index) & ((values < 0) | (values >= num_classes))])
    if bad.size:
        raise ValueError(
            f"{source}: mask values {bad[:10].tolist()} are outside classes 0..{num_classes - 1} "
            f"(ignore_index={ignore_index}); pass value_map or palette to map them"
        )
    return values


def make_synthetic_membranes(
    n: int = 16, size: int = 96, cells: int = 24, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """EM-like images ``(n, size, size)`` float32 in [0, 1]: Voronoi cells whose
    boundaries (class 1) are dark, plus blur-free noise; masks int64 (0 interior, 1 membrane)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for _ in range(n):
        seeds = rng.uniform(0, size, (cells, 2))
        dist = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2
        label = dist.argmin(-1)
        edge = np.zeros_like(label, dtype=bool)
        edge[:-1] |= label[:-1] != label[1:]
        edge[:, :-1] |= label[:, :-1] != label[:, 1:]
        shade = rng.uniform(0.55, 0.9, cells)[label]
        image = np.where(edge, 0.15, shade) + rng.normal(0, 0.08, label.shape)
        images.append(np.clip(image, 0, 1).astype(np.float32))
        masks.append(edge.astype(np.int64))
    return np.stack(images), np.stack(masks)


class CropDataset(Dataset):
    """Training samples: a random crop of image ``i % N``, augmented.

    Items are ``(epoch, index)`` (from ``EpochTaggedSampler``; a plain ``index`` means
    epoch 0) and every draw comes from ``sample_generator(seed, epoch, index)``, so a
    sample does not depend on how many were loaded before it, e.g. by a resumed fit.
    """

    def __init__(self, images, masks, crop, samples, augment, elastic, seed) -> None:
        self.images, self.masks, self.crop = images, masks, tuple(crop)
        self.samples, self.augment, self.elastic, self.seed = samples, augment, elastic, seed

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        gen = sample_generator(self.seed, epoch, index)
        k = index % len(self.images)
        image, mask = random_crop(self.images[k], self.masks[k], self.crop, gen)
        if self.augment:
            image, mask = augment_pair(image, mask, gen, elastic=self.elastic)
        return {"image": image, "mask": mask}


class FullDataset(Dataset):
    """Whole images / volumes for validation, test and prediction."""

    def __init__(self, images, masks, names) -> None:
        self.images, self.masks, self.names = images, masks, names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index], "index": index}


class SegmentationDataModule(ResumableDataModuleMixin):
    """2D image/mask folders, 3D volumes, or the built-in synthetic membranes.

    Args:
        root: a folder with ``image_dir`` and ``mask_dir`` inside, a registered
            name (``isbi2012`` -> its ``train/`` folder), or None for synthetic data.
        image_dir, mask_dir: sub-folders (files matched by sorted natural order).
        train_indices, val_indices, test_indices: which files (``"0-24"``, lists);
            val defaults to the last two training files (monitoring only).
        volume: 3D mode. Files with 3D masks (``.npy`` volumes, multi-page TIFF
            stacks) are one volume each; 2D sections are stacked per split into one
            volume ``(C, T, H, W)`` (ISBI's 30 sections -> a 30x512x512 stack).
        crop_size: training crop ``(H, W)`` or ``(T, H, W)``.
        samples_per_epoch: random crops per training epoch.
        num_classes, value_map, palette, ignore_index: mask decoding (see ``map_mask``).
        augment, elastic: flips/rotations, and elastic deformation (2D).
        synthetic: options of ``make_synthetic_membranes`` when ``root`` is None.
    """

    eval_batch_size = 1  # whole images and volumes, tiled by sliding-window inference
    train_sampler_class = EpochTaggedSampler  # crops and augmentation are drawn per (seed, epoch, index)

    def __init__(
        self,
        root: str | None = None,
        image_dir: str = "image",
        mask_dir: str = "label",
        train_indices: str | list[int] | None = None,
        val_indices: str | list[int] | None = None,
        test_indices: str | list[int] | None = None,
        volume: bool = False,
        crop_size: Sequence[int] = (96, 96),
        samples_per_epoch: int = 64,
        batch_size: int = 4,
        num_classes: int = 2,
        value_map: dict | None = None,
        palette: list[list[int]] | None = None,
        ignore_index: int = 255,
        augment: bool = True,
        elastic: bool = False,
        synthetic: dict | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if len(crop_size) != (3 if volume else 2):
            raise ValueError(f"crop_size must be {'(T, H, W)' if volume else '(H, W)'}, got {tuple(crop_size)}")
        self.num_classes, self.ignore_index, self.batch_size = num_classes, ignore_index, batch_size
        self.volume, self.seed, self.num_workers = volume, seed, num_workers
        self.datasets: dict[str, Dataset] = {}
        self.mean = self.std = None

    # -- reading --------------------------------------------------------------------

    def _folder(self) -> Path:
        root = self.hparams.root
        info = get_dataset_info(root)
        if info is not None:
            return resolve_dataset(root).parent / "train"
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"segmentation root {path} is not a folder (nor a registered dataset)")
        return path

    def _files(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist")
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise FileNotFoundError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files

    def _load_pairs(self) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        hp = self.hparams
        if hp.root is None:
            images, masks = make_synthetic_membranes(**{"seed": self.seed, **(hp.synthetic or {})})
            return list(images), list(masks), [f"synthetic_{i}" for i in range(len(images))]
        folder = self._folder()
        image_files, mask_files = self._files(folder / hp.image_dir), self._files(folder / hp.mask_dir)
        if len(image_files) != len(mask_files):
            raise ValueError(f"{folder}: {len(image_files)} images but {len(mask_files)} masks")
        images, masks = [], []
        for fi, fm in zip(image_files, mask_files, strict=True):
            image, raw = read_image(fi), read_image(fm)
            check_finite(image, str(fi))
            check_finite(raw, str(fm))
            spatial = raw.shape[:-1] if hp.palette is not None else raw.shape
            if image.shape[: len(spatial)] != spatial:
                raise ValueError(
                    f"image {fi.name} has size {image.shape[:len(spatial)]} but mask {fm.name} has {spatial}"
                )
            images.append(image)
            masks.append(map_mask(raw, self.num_classes, hp.value_map, hp.palette, self.ignore_index, str(fm)))
        return images, masks, [f.stem for f in image_files]

    @staticmethod
    def _to_tensor(image: np.ndarray, spatial_dims: int) -> torch.Tensor:
        x = torch.from_numpy(np.array(image)).float()
        if image.dtype == np.uint8:
            x = x / 255.0
        elif image.dtype == np.uint16:
            x = x / 65535.0
        return x[None] if x.ndim == spatial_dims else x.movedim(-1, 0)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        images, masks, names = self._load_pairs()
        n = len(images)
        train = parse_indices(hp.train_indices if hp.train_indices is not None else f"0-{max(n - 3, 0)}", n)
        test = parse_indices(hp.test_indices if hp.test_indices is not None else f"{max(n - 2, 0)}-{n - 1}", n)
        val = parse_indices(hp.val_indices, n) if hp.val_indices is not None else train[-2:]
        # A 3D mask means each file is a volume; 2D masks in volume mode are sections to stack.
        dims = 3 if masks[0].ndim == 3 else 2
        split = {}
        for name, idx in (("train", train), ("val", val), ("test", test)):
            xs = [self._to_tensor(images[i], dims) for i in idx]
            ys = [torch.from_numpy(masks[i]) for i in idx]
            if self.volume and dims == 2:  # sections -> one (C, T, H, W) volume
                xs, ys = [torch.stack(xs, dim=1)], [torch.stack(ys, dim=0)]
            split[name] = (xs, ys, [names[i] for i in idx])
        channels = {x.shape[0] for x in split["train"][0]}
        if len(channels) != 1:
            raise ValueError(f"training images have different channel counts {sorted(channels)}")
        self.in_chans = channels.pop()
        for name, (xs, _, nm) in split.items():  # else normalisation broadcasts and the model fails later
            labels = nm if len(nm) == len(xs) else [f"volume of {', '.join(nm[:3])}..."]  # stacked sections
            odd = [n for x, n in zip(xs, labels, strict=True) if x.shape[0] != self.in_chans]
            if odd:
                raise ValueError(
                    f"{name} image(s) {odd[:5]} have another channel count than the training images "
                    f"({self.in_chans}); convert them (e.g. to grayscale or RGB) to match"
                )
        flat = torch.cat([x.flatten(1) for x in split["train"][0]], dim=1)
        self.mean, self.std = flat.mean(1), flat.std(1).clamp_min(1e-6)
        for name, (xs, ys, nm) in split.items():
            xs = [self.normalize(x) for x in xs]
            if name == "train":
                self.datasets[name] = CropDataset(
                    xs, ys, hp.crop_size, hp.samples_per_epoch, hp.augment, hp.elastic, self.seed
                )
            else:
                self.datasets[name] = FullDataset(xs, ys, nm)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - self.mean.view(shape)) / self.std.view(shape)

