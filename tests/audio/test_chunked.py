"""Chunked overlap-add inference: exact for local models, speaker order aligned between chunks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from omniseq.domains.audio.chunked import (
    align_to_previous,
    chunk_starts,
    separate_chunked,
    separate_stream,
)


@pytest.mark.parametrize("length", [1, 99, 100, 101, 257, 1000])
def test_chunks_cover_the_recording_with_at_least_the_overlap(length):
    starts = chunk_starts(length, 100, 30)
    stops = [min(s + 100, length) for s in starts]
    assert starts[0] == 0 and stops[-1] == length
    for (s0, e0), s1 in zip(zip(starts, stops, strict=True), starts[1:], strict=False):
        assert s1 > s0 and e0 - s1 >= 30


def test_pointwise_model_chunked_equals_whole():
    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([0.25 * x, 0.75 * x], dim=1)

    x = np.random.default_rng(0).standard_normal(1234).astype(np.float32)
    out = separate_chunked(model, x, chunk_size=200, overlap=50)
    np.testing.assert_allclose(out, np.stack([0.25 * x, 0.75 * x]), rtol=1e-5, atol=1e-6)


def test_speaker_order_and_gain_are_aligned_between_chunks():
    rng = np.random.default_rng(1)
    n = 2000
    t = np.arange(n)
    truth = np.stack([np.sin(0.031 * t) * (1 + 0.3 * np.sin(0.002 * t)), np.sign(np.sin(0.0071 * t)) * 0.5,
                      rng.standard_normal(n) * 0.3])
    mixture = truth.sum(0)
    calls = iter(range(100))
    perm_rng = np.random.default_rng(2)

    def oracle(x: torch.Tensor) -> torch.Tensor:
        # knows where the chunk lies (the chunk arrives scaled to peak 1), answers in a
        # random order with random gains and signs
        chunk = x[0].double().numpy()
        def match(s: int) -> float:
            seg = mixture[s : s + len(chunk)]
            return abs(seg @ chunk) / np.linalg.norm(seg)

        start = max(chunk_starts(n, 300, 60), key=match)
        next(calls)
        chunk = truth[:, start : start + x.shape[1]][perm_rng.permutation(3)]
        gains = perm_rng.choice([-2.0, 0.5, 3.0], size=3)
        return torch.from_numpy(gains[:, None] * chunk)[None]

    out = separate_chunked(oracle, mixture, chunk_size=300, overlap=60)
    # one global permutation and gain per source, identical everywhere
    order = [int(np.argmax([abs(np.corrcoef(o, s)[0, 1]) for s in truth])) for o in out]
    assert sorted(order) == [0, 1, 2]
    for o, k in zip(out, order, strict=True):
        gain = (o @ truth[k]) / (truth[k] @ truth[k])
        np.testing.assert_allclose(o, gain * truth[k], rtol=1e-3, atol=1e-3)
        assert gain == pytest.approx(1.0, abs=1e-3)  # fitted to the mixture: the true level


def test_unaligned_stream_would_be_wrong():
    # the same oracle without alignment leaves swaps in place (the test above can fail)
    truth = np.stack([np.sin(0.05 * np.arange(600)), np.cos(0.013 * np.arange(600))])
    flips = itertools.cycle([False, True])

    def swapping(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([x[0].numpy(), 0 * x[0].numpy()])[:: -1 if next(flips) else 1].copy())[None]

    blocks = list(separate_stream(swapping, lambda a, b: truth[0, a:b], 600, 200, 50, align=False))
    out = np.concatenate(blocks, axis=1)
    assert np.abs(out[0]).max() > 0 and np.abs(out[1]).max() > 0  # energy ended up in both outputs
    aligned = np.concatenate(list(separate_stream(swapping, lambda a, b: truth[0, a:b], 600, 200, 50)), axis=1)
    assert min(np.abs(aligned[0]).max(), np.abs(aligned[1]).max()) < 1e-6  # float32 rounding only


def test_align_to_previous_recovers_permutation_and_gain():
    rng = np.random.default_rng(3)
    prev = rng.standard_normal((3, 50))
    current = np.stack([prev[2] * -2.0, prev[0] * 0.5, prev[1] * 4.0])
    perm, gains = align_to_previous(prev, current)
    assert perm == (1, 2, 0)
    np.testing.assert_allclose(gains, [2.0, 0.25, -0.5])


def test_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(10, 5, 5)
    with pytest.raises(ValueError, match=r"mono \(T,\)"):
        separate_chunked(lambda x: x, np.zeros((2, 10)), 5, 1)
    with pytest.raises(ValueError, match=r"\(1, n\) to \(1, S, n\)"):
        separate_chunked(lambda x: x, np.zeros(10), 5, 1)


def test_silent_overlap_falls_back_on_long_context_spectra():
    """Both speakers pause over the whole overlap, so it cannot tell the order; the model
    answers the second chunk swapped. Each output's average spectrum so far (a low voice,
    a high one) puts it back."""
    rng = np.random.default_rng(4)
    n, chunk, overlap = 1800, 1000, 200
    low = np.convolve(rng.standard_normal(n + 15), np.ones(16) / 4, "valid")[:n]  # energy below ~500 Hz
    high = np.diff(rng.standard_normal(n + 1))  # energy near Nyquist
    truth = np.zeros((2, n))
    truth[0, :700], truth[0, 1100:] = low[:700], low[1100:]
    truth[1, 100:600], truth[1, 1200:1700] = high[100:600], high[1200:1700]
    mixture = truth.sum(0)
    assert chunk_starts(n, chunk, overlap) == [0, 800] and not truth[:, 800:1000].any()

    def swapping_oracle(x: torch.Tensor) -> torch.Tensor:
        second = abs(mixture[800:] @ x[0].double().numpy()) > abs(mixture[:1000] @ x[0].double().numpy())
        start = 800 if second else 0
        out = truth[:, start : start + chunk] * float(x[0].abs().max()) / np.abs(mixture[start : start + chunk]).max()
        return torch.from_numpy(out[::-1].copy() if second else out)[None]

    out = separate_chunked(swapping_oracle, mixture, chunk, overlap)
    np.testing.assert_allclose(out, truth, atol=1e-5)
