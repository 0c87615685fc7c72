"""Chunked overlap-add separation of recordings of any length.

The recording is cut into chunks of ``chunk_size`` samples overlapping by at
least ``overlap``; each chunk is separated on its own, so memory depends on
the chunk, not on the recording. A separator's output order (and, when
trained with a scale-invariant loss, its gain and sign) is arbitrary per chunk:

- gains are fixed per chunk against the mixture, never chained from chunk to
  chunk: the least-squares gains (ridge towards 1) that make the sources sum to
  the chunk of the mixture, then the remainder shared equally (the mixture
  consistency projection of Wisdom et al. 2019, https://arxiv.org/abs/1811.08521).
  The stitched sources sum to the mixture, so their level cannot drift;
- the order follows the previous chunk on their overlap (the permutation with
  the least squared difference). When the overlap cannot tell (one speaker
  silent there, or both), a longer context decides: each output's average log
  spectrum over everything stitched so far, against each new source's.

The chunk is scaled to peak 1 before the model and back after (separators are
scale-invariant), so recordings at any level run without overflow. The aligned
overlaps are cross-faded linearly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch

__all__ = ["align_to_previous", "chunk_starts", "fit_to_mixture", "separate_chunked", "separate_stream"]

SeparateFn = Callable[[torch.Tensor], torch.Tensor]  # (1, n) -> (1, S, n)
ReadFn = Callable[[int, int], np.ndarray]  # (start, stop) -> (stop - start,)


def chunk_starts(length: int, chunk_size: int, overlap: int) -> list[int]:
    """Chunk start offsets; the last chunk ends exactly at ``length``."""
    if chunk_size <= overlap or overlap < 0:
        raise ValueError(f"need 0 <= overlap < chunk_size, got overlap={overlap}, chunk_size={chunk_size}")
    if length <= chunk_size:
        return [0]
    hop = chunk_size - overlap
    starts = list(range(0, length - chunk_size, hop))
    return starts + [length - chunk_size]


def align_to_previous(previous: np.ndarray, current: np.ndarray, eps: float = 1e-8) -> tuple[tuple[int, ...], np.ndarray]:
    """Permutation and gains mapping ``current (S, n)`` onto ``previous (S, n)``.

    Returns ``(perm, gains)`` such that ``gains[:, None] * current[perm]`` best
    matches ``previous`` on the overlap.
    """
    S = previous.shape[0]
    dots = previous @ current.T  # (S_prev, S_cur)
    norms = np.sqrt((previous**2).sum(1))[:, None] * np.sqrt((current**2).sum(1))[None, :] + eps
    corr = np.abs(dots) / norms
    perm = max(itertools.permutations(range(S)), key=lambda p: sum(corr[i, p[i]] for i in range(S)))
    gains = np.ones(S, dtype=np.float64)
    for i, j in enumerate(perm):
        energy = float(current[j] @ current[j])
        # silent overlaps carry no gain information; keep the chunk as it is
        if energy > eps and norms[i, j] > 10 * eps:
            gains[i] = dots[i, j] / energy
    return perm, gains


def fit_to_mixture(estimates: np.ndarray, mixture: np.ndarray, ridge: float = 1e-5) -> np.ndarray:
    """``estimates (S, n)`` rescaled so that they sum to ``mixture (n,)``.

    First one common gain ``c``: the least-squares fit of the estimates' sum to the
    mixture. Then per-source gains ``g`` minimising
    ``|mixture - sum_i g_i est_i|^2 + ridge * trace(G) / S * |g - c|^2`` (``G`` the
    Gram matrix): the fit decides where it can, and where it cannot (a speaker silent
    in the chunk, whose estimate is a faint copy of the other) the sources keep their
    relative levels instead of sharing the loud one. What is left is shared equally.
    """
    S = estimates.shape[0]
    gram = estimates @ estimates.T
    scale = float(np.trace(gram)) / S
    total = estimates.sum(0)
    if scale <= 0 or float(total @ total) <= 1e-12 * scale:  # silent, or estimates cancelling out
        return np.repeat(mixture[None] / S, S, axis=0)
    common = float(total @ mixture) / float(total @ total)
    residual = mixture - common * total
    gains = common + np.linalg.solve(gram + ridge * scale * np.eye(S), estimates @ residual)
    fitted = gains[:, None] * estimates
    return fitted + (mixture - fitted.sum(0)) / S


def _run(separate: SeparateFn, chunk: np.ndarray) -> np.ndarray:
    peak = float(np.abs(chunk).max())
    scale = peak if peak > 0 else 1.0
    with torch.no_grad():
        out = separate(torch.from_numpy(np.ascontiguousarray(chunk / scale, dtype=np.float32))[None])
    if out.ndim != 3 or out.shape[0] != 1 or out.shape[-1] != chunk.shape[0]:
        raise ValueError(f"separator must map (1, n) to (1, S, n); got {tuple(out.shape)} for n={chunk.shape[0]}")
    estimates = out[0].detach().cpu().numpy().astype(np.float64)
    if not np.isfinite(estimates).all():
        raise ValueError("the separator returned NaN or infinite samples for a finite chunk (a broken model?)")
    return fit_to_mixture(estimates, chunk.astype(np.float64) / scale) * scale


class SpectralProfiles:
    """Average log-power spectrum of each output over its active frames so far: a cheap
    long-context description of each speaker, for chunks whose overlap cannot decide."""

    def __init__(self, sources: int, n_fft: int = 256) -> None:
        self.n_fft = n_fft
        self.sums = np.zeros((sources, n_fft // 2 + 1))
        self.counts = np.zeros(sources)

    def describe(self, signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per signal: mean log spectrum of its frames within 20 dB of its loudest, and their count."""
        frames = signals.shape[1] // self.n_fft
        if frames == 0:
            return np.zeros((signals.shape[0], self.n_fft // 2 + 1)), np.zeros(signals.shape[0])
        blocks = signals[:, : frames * self.n_fft].reshape(signals.shape[0], frames, self.n_fft)
        power = np.abs(np.fft.rfft(blocks * np.hanning(self.n_fft), axis=-1)) ** 2
        energy = power.sum(-1)
        active = energy > 0.01 * energy.max(-1, keepdims=True) + 1e-20
        logs = np.log(power + 1e-10 * power.mean() + 1e-30)
        counts = active.sum(-1).astype(np.float64)
        means = (logs * active[..., None]).sum(1) / np.maximum(counts, 1)[:, None]
        return means, counts

    def update(self, signals: np.ndarray) -> None:
        means, counts = self.describe(signals)
        self.sums += means * counts[:, None]
        self.counts += counts

    def costs(self, signals: np.ndarray) -> np.ndarray | None:
        """``(S_tracks, S_new)`` distances of the new signals to each track, or None when unknown."""
        means, counts = self.describe(signals)
        if (self.counts == 0).any() or (counts == 0).any():
            return None
        tracks = self.sums / self.counts[:, None]
        centre = lambda x: x - x.mean(-1, keepdims=True)  # noqa: E731  (level-free: shape of the spectrum only)
        return ((centre(tracks)[:, None] - centre(means)[None]) ** 2).mean(-1)


def _order(tail: np.ndarray, head: np.ndarray, current: np.ndarray, profiles: SpectralProfiles,
           margin: float = 0.5) -> tuple[int, ...]:
    """The permutation of ``current`` that continues the tracks: by the overlap when it is
    clear (the best permutation's error below ``margin`` times the next best's), else by
    the long-context spectral profiles."""
    S = tail.shape[0]
    perms = list(itertools.permutations(range(S)))
    errors = [float(sum(((tail[i] - head[p[i]]) ** 2).sum() for i in range(S))) for p in perms]
    ranked = sorted(range(len(perms)), key=errors.__getitem__)
    best, runner_up = errors[ranked[0]], errors[ranked[1]] if len(perms) > 1 else np.inf
    if best < margin * runner_up:  # strict: a silent overlap (0 and 0) cannot decide
        return perms[ranked[0]]
    costs = profiles.costs(current)
    if costs is None:
        return perms[ranked[0]]
    return min(perms, key=lambda p: sum(costs[i, p[i]] for i in range(S)))


def separate_stream(
    separate: SeparateFn, read: ReadFn, length: int, chunk_size: int, overlap: int,
    align: bool = True,
) -> Iterator[np.ndarray]:
    """Yield finished ``(S, n)`` blocks in order; together they cover ``[0, length)``.

    Only one chunk and one overlap are held at a time (flat memory).
    """
    starts = chunk_starts(length, chunk_size, overlap)
    tail: np.ndarray | None = None  # previous chunk's estimate of [start, previous stop)
    profiles: SpectralProfiles | None = None
    for index, start in enumerate(starts):
        stop = min(start + chunk_size, length)
        est = _run(separate, read(start, stop))
        profiles = profiles or SpectralProfiles(est.shape[0])
        if tail is not None and tail.shape[1] > 0:
            shared = tail.shape[1]
            if align:
                est = est[list(_order(tail, est[:, :shared], est, profiles))]
            ramp = (np.arange(shared) + 0.5) / shared
            est[:, :shared] = tail * (1 - ramp) + est[:, :shared] * ramp
        last = index + 1 == len(starts)
        cut = est.shape[1] if last else starts[index + 1] - start
        if cut > 0:
            profiles.update(est[:, :cut])
            yield est[:, :cut]
        tail = est[:, cut:]


def separate_chunked(
    separate: SeparateFn, mixture: np.ndarray | torch.Tensor, chunk_size: int, overlap: int,
    align: bool = True,
) -> np.ndarray:
    """Separate a whole mono recording ``(T,)`` -> ``(S, T)`` chunk by chunk."""
    if isinstance(mixture, torch.Tensor):
        mixture = mixture.detach().cpu().numpy()
    mixture = np.asarray(mixture)
    if mixture.ndim != 1:
        raise ValueError(f"separate_chunked: mixture must be mono (T,), got shape {mixture.shape}")
    blocks = separate_stream(
        separate, lambda a, b: mixture[a:b], mixture.shape[0], chunk_size, overlap, align
    )
    return np.concatenate(list(blocks), axis=1).astype(np.float32)
