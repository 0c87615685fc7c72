"""Issue 14, section 3, separation: unusual but legal input never gives a silently wrong result.

- separated sources above full scale are written exactly (float wavs), with a warning;
- an int16 array is scaled to [-1, 1) like the same recording read from a wav;
- a recording at 1e30 separates like the same recording at 1 (no NaN sources);
- a full disk while writing outputs leaves all of them or none.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from omniseq.api.separator import Separator

RATE = 8000


class LoudSplit(nn.Module):
    """A fixed 'separator' whose sources are 3x and -2x the input: they sum to it, and
    peak well above the input's level."""

    kernel_size = 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.stack([3 * wav, -2 * wav], dim=1)


class LowPassSplit(nn.Module):
    """A fixed 'separator' that is not scale-free inside: a low band (moving average)
    and the rest, with a float32 power computation that overflows for huge inputs."""

    kernel_size = 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        low = torch.nn.functional.avg_pool1d(wav[:, None], 9, stride=1, padding=4, count_include_pad=False)[:, 0]
        power = wav.square().mean(-1, keepdim=True)  # inf for samples near 1e30 in float32
        gate = power / (power + 1e-3)
        return torch.stack([low * gate, (wav - low) * gate], dim=1)


def _recording(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 200 * t) + 0.3 * np.sin(2 * np.pi * 2100 * t)).astype(np.float32)


def test_sources_above_full_scale_are_not_clipped(tmp_path):
    wav = _recording()
    with pytest.warns(UserWarning, match=r"peak at 1\.8\d, above full scale"):
        sources = Separator(LoudSplit(), RATE).separate(wav, out_dir=tmp_path, plot=False)
    assert np.abs(sources).max() > 1.8  # 3x the input, which peaks near 0.62
    for i in range(2):
        written, rate = sf.read(tmp_path / f"source_{i + 1}.wav", dtype="float32")
        assert rate == RATE and sf.info(str(tmp_path / f"source_{i + 1}.wav")).subtype == "FLOAT"
        np.testing.assert_array_equal(written, sources[i])  # every sample kept, none at +-1
    np.testing.assert_allclose(sources.sum(0), wav, atol=1e-6)


def test_streamed_file_is_not_clipped_either(tmp_path):
    path = tmp_path / "rec.wav"
    sf.write(path, _recording(), RATE, subtype="PCM_16")
    with pytest.warns(UserWarning, match="above full scale"):
        Separator(LoudSplit(), RATE).separate_file(path, tmp_path / "out")
    written, _ = sf.read(tmp_path / "out" / "source_1.wav", dtype="float32")
    assert np.abs(written).max() > 1.8


def test_int16_array_is_scaled(tmp_path):
    wav = _recording()
    pcm = np.round(wav * 32767).astype(np.int16)
    separator = Separator(LowPassSplit(), RATE)
    from_int = separator.separate(pcm)
    from_float = separator.separate(pcm.astype(np.float32) / 32768)
    np.testing.assert_allclose(from_int, from_float, rtol=1e-5, atol=1e-6)
    assert np.abs(from_int.sum(0)).max() < 1.0  # in [-1, 1), not 32767
    # the same recording read from a 16-bit wav gives the same sources
    sf.write(tmp_path / "rec.wav", pcm, RATE, subtype="PCM_16")
    np.testing.assert_allclose(separator.separate(tmp_path / "rec.wav"), from_int, rtol=1e-5, atol=1e-6)


def test_huge_float_recording_separates_like_a_normal_one():
    wav = _recording()
    separator = Separator(LowPassSplit(), RATE)
    normal = separator.separate(wav)
    huge = separator.separate(wav * np.float32(1e30))
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge / 1e30, normal, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"beyond float32's range; scale the recording down"):
        separator.separate(wav.astype(np.float64) * 1e300)


def _disk_full_on_second_write(monkeypatch):
    real_write, calls = sf.write, []

    def write(file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_write(file, *args, **kwargs)

    monkeypatch.setattr(sf, "write", write)
    return calls


def test_full_disk_leaves_all_outputs_or_none(tmp_path, monkeypatch):
    calls = _disk_full_on_second_write(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        Separator(LowPassSplit(), RATE).separate(_recording(), out_dir=out, plot=False)
    assert len(calls) == 2  # the first source was written (to a temporary name) before the disk filled
    assert sorted(p.name for p in out.iterdir()) == []  # no source_1.wav without source_2.wav, no temporaries
    monkeypatch.undo()
    Separator(LowPassSplit(), RATE).separate(_recording(), out_dir=out, plot=False)
    assert sorted(p.name for p in out.iterdir()) == ["source_1.wav", "source_2.wav"]
