"""Training augmentation for separation: each transform's known answer, and the DataModule's
draws being a function of (seed, epoch, index)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omniseq.data.separation import SeparationDataModule
from omniseq.domains.audio.augment import (
    exponential_rir,
    noise_at_snr,
    pitch_shift,
    reverberate,
    speed_perturb,
)

RATE = 8000


def _sine(freq: float, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)


def _peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav)), n=8 * len(wav)))
    return float(np.argmax(spectrum) * RATE / (8 * len(wav)))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_scales_length_and_frequency(factor):
    out = speed_perturb(_sine(400.0), factor, RATE)
    assert len(out) == pytest.approx(RATE / factor, abs=2)
    assert _peak_hz(out) == pytest.approx(400.0 * factor, rel=0.01)
    np.testing.assert_array_equal(speed_perturb(_sine(400.0), 1.0, RATE), _sine(400.0))


@pytest.mark.parametrize("semitones", [-2.0, 3.0])
def test_pitch_shift_moves_frequency_and_keeps_length(semitones):
    wav = _sine(500.0)
    out = pitch_shift(wav, semitones, RATE)
    assert out.shape == wav.shape
    assert _peak_hz(out[1000:-1000]) == pytest.approx(500.0 * 2 ** (semitones / 12), rel=0.02)


def test_exponential_rir_decays_60_db_over_rt60():
    rt60 = 0.4
    rir = exponential_rir(rt60, RATE, seed=3)
    assert rir[0] == 1.0 and len(rir) == int(rt60 * RATE)
    # Schroeder's backward-integrated energy decays linearly in dB; its slope gives the RT60
    tail = rir[1:] ** 2
    edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
    t = np.arange(1, len(rir)) / RATE
    fit = (edc > -25) & (edc < -5)
    slope = np.polyfit(t[fit], edc[fit], 1)[0]  # dB per second
    assert -60 / slope == pytest.approx(rt60, rel=0.1)
    assert np.sum(rir[1:] ** 2) == pytest.approx(1.0)  # direct-to-reverberant ratio 0 dB
    assert not np.array_equal(rir, exponential_rir(rt60, RATE, seed=4))


def test_reverberate_is_convolution_cut_to_length():
    rng = np.random.default_rng(0)
    wav, rir = rng.standard_normal(500), exponential_rir(0.05, RATE, seed=0)
    np.testing.assert_allclose(reverberate(wav, rir), np.convolve(wav, rir)[:500], atol=1e-10)


def test_noise_at_snr_hits_the_ratio():
    rng = np.random.default_rng(1)
    speech, noise = rng.standard_normal(4000), 5 * rng.standard_normal(4000)
    scaled = noise_at_snr(speech, noise, 7.5)
    assert 10 * math.log10(np.sum(speech**2) / np.sum(scaled**2)) == pytest.approx(7.5, abs=1e-9)


def _augmented(tmp_path, **options) -> SeparationDataModule:
    dm = SeparationDataModule(num_train=8, num_val=2, num_test=2, batch_size=2, list_dir=str(tmp_path / "lists"),
                              overlap="min", speed_range=(0.9, 1.1), pitch_range=(-2.0, 2.0),
                              peak_range_db=(-20.0, -1.0), reverb_prob=0.5, **options)
    dm.setup()
    return dm


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    a, b = _augmented(tmp_path), _augmented(tmp_path)
    for epoch, index in [(0, 0), (3, 5)]:
        x, y = a.datasets["train"][(epoch, index)], b.datasets["train"][(epoch, index)]
        assert torch.equal(x["mixture"], y["mixture"]) and torch.equal(x["sources"], y["sources"])
    specs = [a.datasets["train"].sampler(e, i) for e in range(4) for i in range(8)]
    assert len({s["speeds"][0] for s in specs}) == len(specs)  # fresh draws
    assert 0 < sum("rt60s" in s for s in specs) < len(specs)  # reverberation on about half
    for spec in specs:
        assert all(0.9 <= v <= 1.1 for v in spec["speeds"]) and all(-2 <= v <= 2 for v in spec["pitches"])
        assert 10 ** (-20 / 20) <= spec["peak"] <= 10 ** (-1 / 20)
    item = a.datasets["train"][(1, 2)]
    assert item["mixture"].abs().max().item() == pytest.approx(a.datasets["train"].sampler(1, 2)["peak"], rel=1e-5)
    torch.testing.assert_close(item["mixture"], item["sources"].sum(0), rtol=1e-5, atol=1e-6)
    c = _augmented(tmp_path, seed=1)
    assert c.datasets["train"].sampler(0, 0) != a.datasets["train"].sampler(0, 0)


def test_dynamic_mixing_switch(tmp_path):
    dynamic, fixed = _augmented(tmp_path), _augmented(tmp_path, dynamic_mixing=False)
    keys = lambda dm, epoch: [dm.datasets["train"].sampler(epoch, i)["keys"] for i in range(8)]  # noqa: E731
    assert keys(fixed, 0) == keys(fixed, 1) == keys(dynamic, 0)
    assert keys(dynamic, 1) != keys(dynamic, 0)
    # without dynamic mixing the pairs stay, the augmentation still changes every epoch
    assert fixed.datasets["train"].sampler(0, 0)["speeds"] != fixed.datasets["train"].sampler(1, 0)["speeds"]
