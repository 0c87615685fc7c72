"""Long two-speaker conversations for testing chunked separation, and the per-window report.

``conversation`` lays utterances of two speakers out as a dialogue: turns of a few
utterances, short pauses, turns that start before the previous one ends, and the
listener's interjections. ``window_report`` scores a stitched separation of such a
recording window by window against the same separator run on each window alone: the
SI-SNRi gap, the speaker order, the output/input peak ratio and the clipped samples,
which are issue 16's criteria for long recordings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from omniseq.data.speech_mixing import UtteranceBank
from omniseq.domains.audio.metrics import pit_si_snr, si_snr_improvement

__all__ = ["WindowReport", "conversation", "window_report"]


def conversation(bank: UtteranceBank, speakers: tuple[str, str], seconds: float, seed: int = 0) -> np.ndarray:
    """``(2, T)`` sources at the bank's rate: alternating turns of 2-4 utterances with
    0.05-0.25 s pauses, each turn starting 0.6 s before to 0.3 s after the previous one
    ends, and every third turn an interjection of the listener in the middle of it.
    Utterance levels vary by +-3 dB; the mixture ``sources.sum(0)`` peaks at 0.5."""
    rate = bank.sample_rate
    rng = np.random.default_rng(seed)
    pools = [[u.key for u in bank.utterances if u.speaker == s] for s in speakers]
    for speaker, pool in zip(speakers, pools, strict=True):
        if not pool:
            raise ValueError(f"conversation: speaker {speaker!r} has no utterances; known: {bank.speakers}")
    total = int(seconds * rate)
    sources = np.zeros((2, total + 5 * rate))

    def say(who: int, at: int) -> int:
        wav = bank.load(pools[who][rng.integers(len(pools[who]))]).astype(np.float64)
        wav *= 0.1 * 10 ** (rng.uniform(-3, 3) / 20) / (np.sqrt(np.mean(wav**2)) + 1e-8)
        sources[who, at : at + len(wav)] += wav
        return at + len(wav)

    cursor, who, turn = 0, 0, 0
    while cursor < total:
        start = cursor
        for _ in range(rng.integers(2, 5)):
            cursor = say(who, cursor) + int(rng.uniform(0.05, 0.25) * rate)
        if turn % 3 == 2:
            say(1 - who, (start + cursor) // 2)
        cursor = max(cursor + int(rng.uniform(-0.6, 0.3) * rate), start + rate)
        who, turn = 1 - who, turn + 1
    sources = sources[:, :total]
    return 0.5 * sources / np.abs(sources.sum(0)).max()


@dataclass
class WindowReport:
    """Per-window scores of a stitched separation (windows where both speakers talk)."""

    stitched_si_snri: np.ndarray  # dB, the stitched output on each window
    alone_si_snri: np.ndarray  # dB, the separator run on that window alone
    orders: list[tuple[int, ...]]  # the stitched output's speaker order per window (PIT)
    peak_ratio: float  # output peak / input peak
    clipped: int  # output samples at or above full scale

    @property
    def gaps(self) -> np.ndarray:
        """Stitched minus alone, dB (negative: stitching lost quality)."""
        return self.stitched_si_snri - self.alone_si_snri

    def swap_rate(self, min_alone_si_snri: float = -np.inf) -> float:
        """Share of windows whose order differs from the majority order, over the windows
        that the separator alone separates at least ``min_alone_si_snri`` dB."""
        keep = [o for o, s in zip(self.orders, self.alone_si_snri, strict=True) if s >= min_alone_si_snri]
        if not keep:
            return float("nan")
        majority = max(set(keep), key=keep.count)
        return sum(o != majority for o in keep) / len(keep)


def window_report(
    stitched: np.ndarray, sources: np.ndarray, separate_alone: Callable[[torch.Tensor], torch.Tensor],
    window: int, min_energy_ratio: float = 0.05,
) -> WindowReport:
    """Score ``stitched (S, T)`` against the true ``sources (S, T)`` on consecutive windows.

    ``separate_alone`` maps a window of the mixture ``(1, n)`` to ``(1, S, n)``: the model on
    that window by itself. Windows where a speaker has under ``min_energy_ratio`` of the
    other's energy are skipped, since SI-SNR of a silent source is undefined.
    """
    mixture = sources.sum(0)
    stitched_scores, alone_scores, orders = [], [], []
    for w in range(0, len(mixture) - window + 1, window):
        ref = torch.from_numpy(sources[:, w : w + window]).double()[None]
        mix = torch.from_numpy(mixture[w : w + window]).double()[None]
        energy = ref[0].square().sum(-1)
        if energy.min() < min_energy_ratio * energy.max():
            continue
        with torch.no_grad():
            alone = separate_alone(mix.float()).double()
        ours = torch.from_numpy(stitched[:, w : w + window]).double()[None]
        stitched_scores.append(float(si_snr_improvement(ours, ref, mix)))
        alone_scores.append(float(si_snr_improvement(alone, ref, mix)))
        orders.append(tuple(pit_si_snr(ours, ref)[1][0].tolist()))
    return WindowReport(
        np.array(stitched_scores), np.array(alone_scores), orders,
        float(np.abs(stitched).max() / np.abs(mixture).max()), int((np.abs(stitched) >= 1.0).sum()),
    )
