"""Joint image/mask augmentation for 2D and 3D segmentation: random crop, flips,
90-degree rotations and elastic deformation (as U-Net uses for EM).

Every random draw of a training sample comes from its own generator seeded by
``(seed, epoch, index)`` (``sample_generator``), with the epoch delivered in the
index by ``EpochTaggedSampler``: fresh augmentation every epoch, yet the same
in a fit resumed mid-epoch as in an uninterrupted one, whichever worker loads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from omniseq.data.loaders import ResumableSampler

__all__ = ["EpochTaggedSampler", "augment_pair", "elastic_deform", "random_crop", "sample_generator"]


class EpochTaggedSampler(ResumableSampler):
    """A ``ResumableSampler`` that yields ``(epoch, index)`` pairs instead of indices.

    The dataset cannot know the epoch itself: persistent DataLoader workers keep
    the copy of it they started with, so the epoch travels with each index.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator of its own for sample ``index`` of epoch ``epoch`` (mixed by SeedSequence,
    so nearby triples give unrelated streams)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def random_crop(
    image: torch.Tensor, mask: torch.Tensor, size: Sequence[int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``image (C, *S)`` and ``mask (*S)`` to ``size`` (zero / ignore padding if smaller)."""
    spatial = mask.shape
    starts = []
    for s, c in zip(spatial, size, strict=True):
        starts.append(int(torch.randint(0, max(s - c, 0) + 1, (1,), generator=generator)))
    index = tuple(slice(st, st + c) for st, c in zip(starts, size, strict=True))
    return image[(slice(None), *index)], mask[index]


def elastic_deform(
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    alpha: float = 8.0,
    sigma: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2D elastic deformation: a random displacement field (pixels, scale ``alpha``)
    smoothed by a Gaussian of width ``sigma``; bilinear for the image, nearest for the mask."""
    C, H, W = image.shape
    noise = torch.rand(1, 2, H, W, generator=generator) * 2 - 1
    radius = min(int(2 * sigma), H - 1, W - 1)  # reflect padding needs radius < size: small crops truncate the Gaussian
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    field = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(2, 1, 1, -1), groups=2)
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(2, 1, -1, 1), groups=2)
    field = field / field.abs().amax().clamp_min(1e-6) * alpha
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    gx = (xs + field[0, 0]) / max(W - 1, 1) * 2 - 1
    gy = (ys + field[0, 1]) / max(H - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)[None]
    warped = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    warped_mask = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=True)[0, 0]
    return warped.to(image.dtype), warped_mask.to(mask.dtype)


def augment_pair(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, elastic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips along every spatial axis and a random 90-degree rotation in the
    last two axes (square crops), then optionally an elastic deformation (2D only)."""
    ndim = mask.ndim
    for axis in range(ndim):
        if torch.rand(1, generator=generator) < 0.5:
            image, mask = image.flip(axis + 1), mask.flip(axis)
    if mask.shape[-1] == mask.shape[-2]:
        k = int(torch.randint(0, 4, (1,), generator=generator))
        image, mask = image.rot90(k, (-2, -1)), mask.rot90(k, (-2, -1))
    if elastic and ndim == 2:
        image, mask = elastic_deform(image, mask, generator)
    return image.contiguous(), mask.contiguous()
