"""A 3-minute conversation of two FSDD speakers (turns, pauses, overlaps, interjections)
through ``Separator.separate``: the stitched output must match the model run alone per
window, keep one speaker order, keep the input's level and never clip.

The model is a leaky oracle: it knows the true sources of whatever window it is given and
answers with a leak of the other speaker that drifts between 5% and 20% over the
recording, in a random order with a random overall gain and a random sign per source on
every call (a mask-based separator trained with a scale-invariant loss). Stitching is
then the only thing under test.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
from torch import nn

from omniseq.api.separator import Separator
from omniseq.data.speech_mixing import UtteranceBank
from omniseq.domains.audio.chunked import chunk_starts
from omniseq.domains.audio.metrics import pit_si_snr, si_snr_improvement
from tests.conftest import shared_dataset

RATE = 8000
WINDOW = int(3.5 * RATE)


def conversation(bank: UtteranceBank, speakers: tuple[str, str], seconds: float, seed: int = 0) -> np.ndarray:
    """``(2, T)`` sources: alternating turns of 2-4 utterances with 0.05-0.25 s pauses, each turn
    starting 0.6 s before to 0.3 s after the previous one ends, and every third turn an
    interjection of the listener in the middle of it."""
    rng = np.random.default_rng(seed)
    pools = [[u.key for u in bank.utterances if u.speaker == s] for s in speakers]
    total = int(seconds * RATE)
    sources = np.zeros((2, total + 5 * RATE))

    def say(who: int, at: int) -> int:
        wav = bank.load(pools[who][rng.integers(len(pools[who]))]).astype(np.float64)
        wav *= 0.1 * 10 ** (rng.uniform(-3, 3) / 20) / (np.sqrt(np.mean(wav**2)) + 1e-8)
        sources[who, at : at + len(wav)] += wav
        return at + len(wav)

    cursor, who, turn = 0, 0, 0
    while cursor < total:
        start = cursor
        for _ in range(rng.integers(2, 5)):
            cursor = say(who, cursor) + int(rng.uniform(0.05, 0.25) * RATE)
        if turn % 3 == 2:
            say(1 - who, (start + cursor) // 2)
        cursor = max(cursor + int(rng.uniform(-0.6, 0.3) * RATE), start + RATE)
        who, turn = 1 - who, turn + 1
    sources = sources[:, :total]
    return 0.5 * sources / np.abs(sources.sum(0)).max()


class LeakyOracle(nn.Module):
    """Returns the true sources of the window it is given (found among ``starts``), each with
    a fresh leak of the other, in a random order with random gains and signs."""

    kernel_size = 1

    def __init__(self, mixture: np.ndarray, sources: np.ndarray, starts: set[int]) -> None:
        super().__init__()
        self.mixture, self.sources, self.starts = mixture, sources, sorted(starts)
        self.rng = np.random.default_rng(1)

    def locate(self, chunk: np.ndarray) -> tuple[int, float]:
        n = len(chunk)
        best, start = -1.0, 0
        for s in self.starts:
            seg = self.mixture[s : s + n]
            if len(seg) == n:
                corr = float(seg @ chunk) / (np.linalg.norm(seg) * np.linalg.norm(chunk) + 1e-12)
                if corr > best:
                    best, start = corr, s
        seg = self.mixture[start : start + n]
        assert best > 0.999999, "the oracle was given a window it does not know"
        return start, float(chunk @ seg) / float(seg @ seg)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        chunk = wav[0].double().numpy()
        start, scale = self.locate(chunk)
        s1, s2 = self.sources[:, start : start + len(chunk)] * scale
        t = (start + np.arange(len(chunk))) / RATE
        leak = 0.125 + 0.075 * np.stack([np.sin(2 * np.pi * t / 37), np.cos(2 * np.pi * t / 23)])
        estimates = np.stack([s1 + leak[0] * s2, s2 + leak[1] * s1])[self.rng.permutation(2)]
        estimates *= self.rng.choice([-1.0, 1.0], size=2)[:, None] * self.rng.uniform(0.2, 5.0)
        return torch.from_numpy(estimates)[None].to(wav.dtype)


def test_three_minute_conversation_is_stitched_like_the_model_alone(tmp_path):
    bank = UtteranceBank(str(shared_dataset("fsdd/fsdd_recordings_george_jackson_lucas_nicolas.tar.gz")), RATE)
    sources = conversation(bank, ("george", "lucas"), 180.0)
    mixture = sources.sum(0)
    separator = Separator(nn.Identity(), RATE)  # the default chunking: 4 s chunks, 2 s overlaps
    windows = list(range(0, len(mixture) - WINDOW + 1, WINDOW))
    oracle = LeakyOracle(mixture, sources, set(chunk_starts(len(mixture), separator.chunk, separator.overlap)) | set(windows))
    separator.model = oracle
    stitched = separator.separate(mixture.astype(np.float32), out_dir=tmp_path, plot=False)
    assert stitched.shape == sources.shape and np.isfinite(stitched).all()

    gaps, perms = [], []
    for w in windows:
        ref = torch.from_numpy(sources[:, w : w + WINDOW])[None]
        mix = torch.from_numpy(mixture[w : w + WINDOW])[None]
        energy = ref[0].square().sum(-1)
        if energy.min() < 0.05 * energy.max():
            continue  # one speaker (nearly) silent: SI-SNR of the other is undefined
        alone = oracle(mix.float()).double()
        ours = torch.from_numpy(stitched[:, w : w + WINDOW]).double()[None]
        gaps.append(float(si_snr_improvement(ours, ref, mix) - si_snr_improvement(alone, ref, mix)))
        perms.append(tuple(pit_si_snr(ours, ref)[1][0].tolist()))
    assert len(gaps) >= 30  # most windows hold both speakers
    assert min(gaps) > -0.5, f"stitched worse than the model alone by {-min(gaps):.2f} dB in some window"
    majority = max(set(perms), key=perms.count)
    swaps = sum(p != majority for p in perms) / len(perms)
    assert swaps < 0.05, f"speaker order swapped in {swaps:.0%} of windows"
    peak_ratio = np.abs(stitched).max() / np.abs(mixture).max()
    assert peak_ratio <= 1.5, f"output peak is {peak_ratio:.2f}x the input's"
    np.testing.assert_allclose(stitched.sum(0), mixture, atol=1e-5)  # the sources add up to the recording
    for i in range(2):
        written, _ = sf.read(tmp_path / f"source_{i + 1}.wav", dtype="float32")
        np.testing.assert_array_equal(written, stitched[i])
        assert np.abs(written).max() < 1.0  # no sample at full scale: nothing clipped
