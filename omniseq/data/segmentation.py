"""Segmentation data: folders of images and masks (2D), stacks as 3D volumes,
and a built-in synthetic membrane dataset so recipes run with no download.

Images: PNG, TIFF (multi-page = a stack), WebP, or ``.npy``. Masks: class
indices, raw values mapped by ``value_map`` (e.g. ISBI's 0 = membrane, 255 =
interior), or RGB palette colours; ``ignore_index`` marks pixels to skip.
Images and masks are paired by file name without suffix (``a.jpg`` <-> ``a.png``).

Pixel values are scaled by one rule everywhere (``scale_pixels``: fit, test,
predict and ``Segmenter``); the per-channel mean and std of the training images
are then applied by the model (``SegmentationTask``), which stores them in every
checkpoint, so test and predict on other folders use the training normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from omniseq.data.augment import EpochTaggedSampler, augment_pair, random_crop, sample_generator
from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import DatasetInfo, get_dataset_info, register_dataset, resolve_dataset

__all__ = [
    "SegmentationDataModule",
    "check_finite",
    "image_to_tensor",
    "make_synthetic_membranes",
    "map_mask",
    "pair_by_stem",
    "parse_indices",
    "read_image",
    "scale_pixels",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".npy", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "val", "test")

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


def read_image(path: str | Path, allow_alpha: bool = True) -> np.ndarray:
    """An image ``(H, W)`` / ``(H, W, C)``, or a stack ``(T, H, W[, C])`` for multi-page TIFF / 3D ``.npy``.

    A missing file raises FileNotFoundError; a truncated, corrupt or non-image file ValueError,
    both naming the file. ``allow_alpha=False`` (images to segment) refuses RGBA and
    gray+alpha files: the alpha channel would otherwise be read as a colour channel.
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
            if not allow_alpha and "A" in image.getbands():
                raise_alpha(path, image.mode, image.getbands())
            frames = [np.asarray(f.copy()) for f in ImageSequence.Iterator(image)]
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not a recognised image file; {expected}") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports truncation and bad chunks this way
        raise ValueError(f"{path}: the image file is truncated or corrupt ({err}); re-export it") from err
    return frames[0] if len(frames) == 1 else np.stack(frames)


def raise_alpha(path: Path, mode: str, bands: tuple[str, ...]) -> None:
    gray = mode.startswith("L") or mode.startswith("I")
    raise ValueError(
        f"{path}: the image has an alpha channel (PIL mode {mode}, bands {''.join(bands)}; alpha is band "
        f"{bands.index('A') + 1} of {len(bands)}); segmentation reads colour or gray images only. Drop the alpha: "
        f"Image.open(path).convert({'L' if gray else 'RGB'!r}).save(path)"
    )


def scale_pixels(image: np.ndarray) -> torch.Tensor:
    """Pixel values as float32, by the one rule that fit, test, predict and ``Segmenter`` share.

    ``uint8`` is divided by 255 and ``uint16`` by 65535 (so 8- and 16-bit exports of one
    picture agree); other integers, booleans and floats keep their values. The training
    mean/std applied afterwards takes care of any remaining range.
    """
    x = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32, copy=False))
    if image.dtype == np.uint8:
        return x / 255.0
    if image.dtype == np.uint16:
        return x / 65535.0
    return x


def image_to_tensor(image: np.ndarray, spatial_dims: int) -> torch.Tensor:
    """``scale_pixels`` of a file's array, channels first: ``(C, *spatial)``."""
    x = scale_pixels(image)
    return x[None] if x.ndim == spatial_dims else x.movedim(-1, 0)


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


def pair_by_stem(
    image_files: Sequence[Path], mask_files: Sequence[Path], folder: Path
) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs matched by file name without suffix, in the images' natural order.

    Raises ValueError naming the images without a mask, the masks without an image,
    and names used twice in one folder (``a.png`` and ``a.tif``).
    """
    by_stem: list[dict[str, Path]] = []
    for files in (image_files, mask_files):
        found: dict[str, Path] = {}
        for f in files:
            if f.stem in found:
                raise ValueError(f"{f.parent}: {found[f.stem].name} and {f.name} have the same name; keep one of them")
            found[f.stem] = f
        by_stem.append(found)
    images, masks = by_stem
    lonely_images = [images[s].name for s in images if s not in masks]
    lonely_masks = [masks[s].name for s in masks if s not in images]
    if lonely_images or lonely_masks:
        counts = f"{len(images)} images but {len(masks)} masks; " if len(images) != len(masks) else ""
        raise ValueError(
            f"{folder}: {counts}images and masks are paired by file name (without suffix), and "
            f"image(s) {lonely_images[:5]} have no mask, mask(s) {lonely_masks[:5]} have no image; "
            "rename or remove them"
        )
    return [(f, masks[f.stem]) for f in image_files]


def pad_to_crop(
    image: torch.Tensor, mask: torch.Tensor, crop: Sequence[int], fill: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``image (C, *S)`` with the per-channel ``fill`` and ``mask (*S)`` with ``ignore_index``
    (at the end of each axis) up to ``crop`` where smaller, so a random crop always fits."""
    extra = [max(c - s, 0) for s, c in zip(mask.shape, crop, strict=True)]
    if not any(extra):
        return image, mask
    pad = [p for e in reversed(extra) for p in (0, e)]  # F.pad takes the last axis first
    shape = (-1,) + (1,) * mask.ndim
    padded = F.pad(image - fill.view(shape), pad) + fill.view(shape)
    return padded, F.pad(mask, pad, value=ignore_index)


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
    """Whole images / volumes for validation, test and prediction (``masks`` None: images only)."""

    def __init__(self, images, masks, names) -> None:
        self.images, self.masks, self.names = images, masks, names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index], "index": index, "name": self.names[index]}
        if self.masks is not None:
            item["mask"] = self.masks[index]
        return item


class SegmentationDataModule(ResumableDataModuleMixin):
    """2D image/mask folders, 3D volumes, or the built-in synthetic membranes.

    Two layouts of ``root``:

    - per-split folders ``root/train``, ``root/val``, ``root/test``, each holding
      ``image_dir`` and ``mask_dir`` (used when any of them exists; test and predict
      need only their own split).
      Fit validates on ``val/`` (without it: on the last two training images, for
      monitoring only) and the test after fit runs on ``test/``; without a ``test/``
      folder with masks there is no test, and the run says so.
    - one folder with ``image_dir`` and ``mask_dir`` split by index ranges.

    Args:
        root: a folder (either layout), a registered name (``isbi2012`` -> its
            ``train/`` folder, index ranges), or None for synthetic data.
        image_dir, mask_dir: sub-folders; images and masks are paired by file name.
        train_indices, val_indices, test_indices: index layout only (``"0-24"``, lists).
            Defaults: all but the last two files train, those two test; val = the
            last two training files (monitoring only). With ``train_indices`` given,
            test defaults to the files in no other split (none left: no test). A
            test index that is also a training index is an error.
        predict_images: a folder of images (no masks needed) for ``predict``;
            default: the test split's images.
        volume: 3D mode. Files with 3D masks (``.npy`` volumes, multi-page TIFF
            stacks) are one volume each; 2D sections are stacked per split into one
            volume ``(C, T, H, W)`` (ISBI's 30 sections -> a 30x512x512 stack).
        crop_size: training crop ``(H, W)`` or ``(T, H, W)``; smaller training images are
            padded (image: the channel mean, mask: ``ignore_index``). The model's
            ``img_size`` and sliding ``window`` follow it.
        samples_per_epoch: random crops per training epoch.
        num_classes, class_names: the classes, given once here; the model follows them
            (``num_classes`` defaults to ``len(class_names)``, else 2).
        value_map, palette, ignore_index: mask decoding (see ``map_mask``).
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
        predict_images: str | None = None,
        volume: bool = False,
        crop_size: Sequence[int] = (96, 96),
        samples_per_epoch: int = 64,
        batch_size: int = 4,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
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
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}; give one of them "
                "(num_classes follows class_names)"
            )
        self.num_classes = len(class_names) if class_names else (num_classes if num_classes is not None else 2)
        self.class_names = list(class_names) if class_names else None
        self.ignore_index, self.batch_size = ignore_index, batch_size
        self.crop_size = tuple(int(c) for c in crop_size)
        self.volume, self.seed, self.num_workers = volume, seed, num_workers
        self.datasets: dict[str, Dataset] = {}
        self.mean = self.std = self.in_chans = None
        self._indexed: tuple[list, list, list] | None = None

    # -- layout ---------------------------------------------------------------------

    def _folder(self) -> Path:
        root = self.hparams.root
        info = get_dataset_info(root)
        if info is not None:
            return resolve_dataset(root).parent / "train"
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"segmentation root {path} is not a folder (nor a registered dataset)")
        return path

    @property
    def split_folders(self) -> bool:
        """True when ``root`` holds per-split folders (``train/<image_dir>``, ``val/...`` or ``test/...``)."""
        hp = self.hparams
        if hp.root is None or get_dataset_info(hp.root) is not None:
            return False
        found = any((self._folder() / split / hp.image_dir).is_dir() for split in SPLITS)
        given = [n for n in ("train_indices", "val_indices", "test_indices") if hp.get(n) is not None]
        if found and given:
            raise ValueError(
                f"{self._folder()} holds per-split folders (train/, val/, test/), so {', '.join(given)} "
                "cannot be used; drop them, or point root at one folder with image and mask sub-folders"
            )
        return found

    @property
    def has_test_split(self) -> bool:
        """Whether there are test images with masks (else the test after fit is skipped)."""
        if self.split_folders:
            return (self._folder() / "test" / self.hparams.mask_dir).is_dir()
        if self.hparams.root is not None and not (self._folder() / self.hparams.image_dir).is_dir():
            return False
        return bool(self._index_splits(len(self._read_indexed()[0]))["test"])

    def probe_channels(self) -> int:
        """Channels of the first training image, reading that one file (and its mask) only."""
        hp = self.hparams
        if hp.root is None:
            return 1
        folder = self._folder() / "train" if self.split_folders else self._folder()
        images = self._files(folder / hp.image_dir)
        if not self.split_folders and hp.train_indices is not None:
            images = [images[parse_indices(hp.train_indices, len(images))[0]]]
        first = self._read_one(images[0])
        masks = [f for f in self._files(folder / hp.mask_dir) if f.stem == images[0].stem]
        spatial = (read_image(masks[0]).ndim - (hp.palette is not None)) if masks else 2
        return 1 if first.ndim == spatial else int(first.shape[-1])

    def _files(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist")
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise FileNotFoundError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files

    # -- reading --------------------------------------------------------------------

    def _read_folder(self, folder: Path, masks: bool = True) -> tuple[list, list | None, list[str]]:
        """Images (and masks, paired by name) of ``folder/image_dir`` (``folder/mask_dir``)."""
        hp = self.hparams
        image_files = self._files(folder / hp.image_dir)
        if not masks:
            return [self._read_one(f) for f in image_files], None, [f.stem for f in image_files]
        images, decoded = [], []
        for fi, fm in pair_by_stem(image_files, self._files(folder / hp.mask_dir), folder):
            image, raw = self._read_one(fi), read_image(fm)
            check_finite(raw, str(fm))
            spatial = raw.shape[:-1] if hp.palette is not None else raw.shape
            if image.shape[: len(spatial)] != spatial:
                raise ValueError(
                    f"image {fi.name} has size {image.shape[:len(spatial)]} but mask {fm.name} has {spatial}"
                )
            images.append(image)
            decoded.append(map_mask(raw, self.num_classes, hp.value_map, hp.palette, self.ignore_index, str(fm)))
        return images, decoded, [f.stem for f in image_files]

    @staticmethod
    def _read_one(path: Path) -> np.ndarray:
        image = read_image(path, allow_alpha=False)
        check_finite(image, str(path))
        return image

    def _read_indexed(self) -> tuple[list, list, list[str]]:
        if self._indexed is None:
            hp = self.hparams
            if hp.root is None:
                images, masks = make_synthetic_membranes(**{"seed": self.seed, **(hp.synthetic or {})})
                self._indexed = list(images), list(masks), [f"synthetic_{i}" for i in range(len(images))]
            else:
                self._indexed = self._read_folder(self._folder())
        return self._indexed

    def _index_splits(self, n: int) -> dict[str, list[int]]:
        hp = self.hparams
        if hp.train_indices is None:
            train = parse_indices(f"0-{max(n - 3, 0)}", n)
            default_test = [i for i in range(max(n - 2, 0), n) if i not in train]
        else:
            train = parse_indices(hp.train_indices, n)
        val = parse_indices(hp.val_indices, n) if hp.val_indices is not None else train[-2:]
        if hp.train_indices is not None:
            held_out = set(train) | (set(val) if hp.val_indices is not None else set())
            default_test = [i for i in range(n) if i not in held_out]
        test = parse_indices(hp.test_indices, n) if hp.test_indices is not None else default_test
        overlap = sorted(set(test) & set(train))
        if overlap:
            raise ValueError(
                f"test_indices {overlap[:10]} are also training images; a test on them measures nothing. "
                "Give test_indices outside train_indices"
            )
        return {"train": train, "val": val, "test": test}

    def _raw_split(self, name: str) -> tuple[list, list | None, list[str]]:
        """Numpy images, masks and names of one split (``predict``: images only when given)."""
        hp = self.hparams
        if name == "predict" and hp.predict_images is not None:
            folder = Path(hp.predict_images).expanduser()
            files = [folder] if folder.is_file() else self._files(folder)
            return [self._read_one(f) for f in files], None, [f.stem for f in files]
        split = "test" if name == "predict" else name
        if self.split_folders:
            folder = self._folder() / split
            if split == "val" and not folder.is_dir():
                rank_zero_info(f"omniseq: {self._folder()} has no val/ folder; validating on the last two "
                               "training images (monitoring only)")
                images, masks, names = self._raw_split("train")
                return images[-2:], masks[-2:], names[-2:]
            if not (folder / hp.mask_dir).is_dir():
                if name == "predict" and (folder / hp.image_dir).is_dir():
                    return self._read_folder(folder, masks=False)
                raise FileNotFoundError(
                    f"{folder / hp.mask_dir} does not exist: no {split} split with masks"
                    + ("; add test/ with images and masks to test, or pass predict_images" if split == "test" else "")
                )
            return self._read_folder(folder)
        images, masks, names = self._read_indexed()
        idx = self._index_splits(len(images))[split]
        if not idx:
            raise ValueError(f"no {split} images: every file is in another split; give {split}_indices")
        return [images[i] for i in idx], [masks[i] for i in idx], [names[i] for i in idx]

    # -- tensors ---------------------------------------------------------------------

    def _tensors(self, name: str) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[str]]:
        images, masks, names = self._raw_split(name)
        # A 3D mask means each file is a volume; 2D masks in volume mode are sections to stack.
        dims = 3 if (masks[0].ndim == 3 if masks is not None else self.volume and images[0].ndim >= 3) else 2
        xs = [image_to_tensor(image, dims) for image in images]
        ys = [torch.from_numpy(np.asarray(m)) for m in masks] if masks is not None else None
        channels = sorted({x.shape[0] for x in xs})
        expected = self.in_chans if self.in_chans is not None else channels[0]
        odd = [n for x, n in zip(xs, names, strict=True) if x.shape[0] != expected]
        if odd and name == "train" and self.in_chans is None:
            raise ValueError(f"training images have different channel counts {channels}")
        if odd:
            raise ValueError(
                f"{name} image(s) {odd[:5]} have another channel count than the "
                f"{'training' if self.in_chans is not None else 'other'} images ({expected}); "
                "convert them (e.g. to grayscale or RGB) to match"
            )
        self.in_chans = expected
        if self.volume and dims == 2:  # sections -> one (C, T, H, W) volume
            xs = [torch.stack(xs, dim=1)]
            ys = [torch.stack(ys, dim=0)] if ys is not None else None
            names = [f"{names[0]}-{names[-1]}"]
        return xs, ys, names

    def split_dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            self._build(name)
        return self.datasets[name]

    def _build(self, name: str) -> None:
        xs, ys, names = self._tensors(name)
        if name != "train":
            self.datasets[name] = FullDataset(xs, ys, names)
            return
        flat = torch.cat([x.flatten(1) for x in xs], dim=1)
        self.mean, self.std = flat.mean(1), flat.std(1).clamp_min(1e-6)
        pairs = [pad_to_crop(x, y, self.crop_size, self.mean, self.ignore_index) for x, y in zip(xs, ys, strict=True)]
        hp = self.hparams
        self.datasets[name] = CropDataset(
            [x for x, _ in pairs], [y for _, y in pairs], self.crop_size, hp.samples_per_epoch, hp.augment,
            hp.elastic, self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        names = needed.get(stage, ("train", "val") + (("test",) if self.has_test_split else ()))
        for name in names:
            self.split_dataset(name)

    def predict_dataloader(self):
        return self.eval_dataloader("predict")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The training normalisation (the model applies it; this is for inspection)."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - self.mean.view(shape)) / self.std.view(shape)
