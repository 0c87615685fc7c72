"""Waveform augmentations for training separators (pure functions of their arguments).

Every function is deterministic given its inputs; the randomness lives in the
parameters, which ``SeparationDataModule`` draws per ``(seed, epoch, index)``.

- ``speed_perturb``: play faster/slower by resampling (tempo and pitch move together,
  as Kaldi's 3-way speed perturbation; Ko et al. 2015,
  https://www.isca-archive.org/interspeech_2015/ko15_interspeech.html);
- ``pitch_shift``: pitch only, length kept (phase-vocoder stretch, then speed);
- ``exponential_rir``: a synthetic room impulse response, a direct path followed by
  Gaussian noise decaying by 60 dB over ``rt60`` seconds (Polack's statistical model);
- ``reverberate``: convolve with an RIR, keeping the length;
- ``noise_at_snr``: a noise scaled to a speech-to-noise ratio.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.functional as AF

__all__ = ["exponential_rir", "noise_at_snr", "pitch_shift", "reverberate", "speed_perturb"]

SPEED_STEP = 0.01  # speed factors are rounded to this, so the resampling ratio stays a small fraction


def speed_perturb(wav: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """``wav`` played ``factor`` times faster: about ``len / factor`` samples, every frequency x ``factor``."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    steps = int(round(factor / SPEED_STEP))
    if steps == int(round(1 / SPEED_STEP)):
        return wav
    # Read as if sampled at sample_rate * factor, brought back to sample_rate.
    orig = int(round(sample_rate * steps * SPEED_STEP))
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), orig, sample_rate)
    return out.numpy().astype(wav.dtype, copy=False)


def pitch_shift(wav: np.ndarray, semitones: float, sample_rate: int, n_fft: int = 256) -> np.ndarray:
    """``wav`` with every frequency x ``2 ** (semitones / 12)`` (rounded to a multiple of
    ``SPEED_STEP``) and the same length: a phase-vocoder stretch by that factor, then
    ``speed_perturb`` by it. The rounding keeps the resampling ratio a small fraction
    (torchaudio's ``pitch_shift`` resamples at ratios such as 8232/8000, 100x slower)."""
    factor = round(2 ** (semitones / 12) / SPEED_STEP) * SPEED_STEP
    if abs(factor - 1) < SPEED_STEP / 2 or len(wav) < n_fft:
        return wav
    hop = n_fft // 4
    window = torch.hann_window(n_fft, dtype=torch.float64)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float64))
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[-2], dtype=torch.float64)[..., None]
    stretched = AF.phase_vocoder(spec, 1 / factor, advance)  # factor x longer, same frequencies
    longer = torch.istft(stretched, n_fft, hop, window=window, length=int(round(len(wav) * factor))).numpy()
    out = speed_perturb(longer, factor, sample_rate)[: len(wav)]
    return np.pad(out, (0, len(wav) - len(out))).astype(wav.dtype, copy=False)


def exponential_rir(rt60: float, sample_rate: int, seed: int, direct_to_reverb_db: float = 0.0) -> np.ndarray:
    """A synthetic RIR of ``rt60`` seconds: ``h[0] = 1`` (direct path), then white noise
    whose amplitude decays as ``exp(-3 ln(10) t / rt60)`` (-60 dB at ``t = rt60``), scaled
    so the tail's energy is ``direct_to_reverb_db`` below the direct path's."""
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    length = max(int(rt60 * sample_rate), 2)
    t = np.arange(1, length) / sample_rate
    tail = np.random.default_rng(seed).standard_normal(length - 1) * np.exp(-3 * math.log(10) * t / rt60)
    tail *= 10 ** (-direct_to_reverb_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    return np.concatenate([[1.0], tail])


def reverberate(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``wav`` convolved with ``rir``, cut to ``len(wav)`` (the reverberant tail past the end is dropped)."""
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float64))
    h = torch.from_numpy(np.ascontiguousarray(rir, dtype=np.float64))
    return AF.fftconvolve(x, h)[: len(wav)].numpy()


def noise_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that ``10 log10(|speech|^2 / |scaled noise|^2) = snr_db``."""
    scale = np.sqrt(np.mean(speech**2) / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return scale * noise
