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
from omniseq.data.conversation import conversation, window_report
from omniseq.data.speech_mixing import UtteranceBank
from omniseq.domains.audio.chunked import chunk_starts
from tests.conftest import shared_dataset

RATE = 8000
WINDOW = int(3.5 * RATE)


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

    report = window_report(stitched, sources, oracle, WINDOW)
    assert len(report.gaps) >= 30  # most windows hold both speakers
    assert report.gaps.min() > -0.5, f"stitched worse than the model alone by {-report.gaps.min():.2f} dB in some window"
    assert report.swap_rate() < 0.05, f"speaker order swapped in {report.swap_rate():.0%} of windows"
    assert report.peak_ratio <= 1.5, f"output peak is {report.peak_ratio:.2f}x the input's"
    assert report.clipped == 0
    np.testing.assert_allclose(stitched.sum(0), mixture, atol=1e-5)  # the sources add up to the recording
    for i in range(2):
        written, _ = sf.read(tmp_path / f"source_{i + 1}.wav", dtype="float32")
        np.testing.assert_array_equal(written, stitched[i])
        assert np.abs(written).max() < 1.0  # no sample at full scale: nothing clipped
