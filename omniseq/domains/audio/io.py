"""Reading, checking, mixing down and resampling waveforms.

Wav I/O goes through soundfile; resampling through ``torchaudio.functional``.
Policy for bad input (each raises ``ValueError`` with the file named):
- a missing, empty (no samples), truncated or undecodable file is refused;
- more than one channel is mixed down to mono by averaging
  (``channels="refuse"`` refuses instead, ``channels=<int>`` picks one);
- a sample rate other than the requested one is resampled
  (``resample=False`` refuses instead).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from omniseq._files import atomic_path

__all__ = ["check_complete", "decode_audio", "load_audio", "resample", "to_float", "to_mono", "write_audio"]

ChannelPolicy = str | int


def to_float(wav: np.ndarray, source: str = "audio") -> np.ndarray:
    """Samples as float32 in the usual [-1, 1) scale: signed integers (int16 PCM...) are
    divided by ``2 ** (bits - 1)``, unsigned ones (8-bit PCM) centred first; floats are kept."""
    wav = np.asarray(wav)
    if np.issubdtype(wav.dtype, np.signedinteger):
        return (wav.astype(np.float64) / 2.0 ** (8 * wav.dtype.itemsize - 1)).astype(np.float32)
    if np.issubdtype(wav.dtype, np.unsignedinteger):
        half = 2.0 ** (8 * wav.dtype.itemsize - 1)
        return ((wav.astype(np.float64) - half) / half).astype(np.float32)
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"{source}: samples must be numbers, got dtype {wav.dtype}")
    finite = wav[np.isfinite(wav)]
    if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
        raise ValueError(
            f"{source}: samples reach {np.abs(finite).max():.3g}, beyond float32's range; "
            "scale the recording down (audio is normally within [-1, 1])"
        )
    return wav.astype(np.float32, copy=False)


def to_mono(wav: np.ndarray, channels: ChannelPolicy = "mean", source: str = "audio") -> np.ndarray:
    """``(T,)`` or ``(T, C)`` (soundfile layout) -> ``(T,)``."""
    if wav.ndim == 1:
        return wav
    if wav.ndim != 2:
        raise ValueError(f"{source}: expected samples of shape (T,) or (T, channels), got {wav.shape}")
    if wav.shape[1] == 1:
        return wav[:, 0]
    if channels == "mean":
        return wav.mean(axis=1)
    if channels == "refuse":
        raise ValueError(
            f"{source}: has {wav.shape[1]} channels but mono was required; mix it down "
            "(channels='mean') or pick one (channels=0)"
        )
    if isinstance(channels, int) and 0 <= channels < wav.shape[1]:
        return wav[:, channels]
    raise ValueError(f"{source}: channels must be 'mean', 'refuse' or a channel index < {wav.shape[1]}, got {channels!r}")


def resample(wav: np.ndarray | torch.Tensor, orig_rate: int, new_rate: int) -> np.ndarray | torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc)."""
    if orig_rate == new_rate:
        return wav
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if isinstance(wav, torch.Tensor):
        return AF.resample(wav, orig_rate, new_rate)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), orig_rate, new_rate)
    return out.numpy()


def _finish(
    wav: np.ndarray, rate: int, source: str, sample_rate: int | None, resample_ok: bool,
    channels: ChannelPolicy,
) -> tuple[np.ndarray, int]:
    if wav.size == 0:
        raise ValueError(f"{source}: the file holds no samples (empty recording)")
    wav = to_mono(wav, channels, source).astype(np.float32, copy=False)
    if not np.isfinite(wav).all():
        raise ValueError(f"{source}: contains NaN or infinite samples")
    if sample_rate is not None and rate != sample_rate:
        if not resample_ok:
            raise ValueError(
                f"{source}: sample rate is {rate} Hz but {sample_rate} Hz is required; "
                "resample it (resample=True) or convert the file"
            )
        wav, rate = resample(wav, rate, sample_rate), sample_rate
    return wav, rate


# libsndfile's header log, e.g. "data : 16000 (should be 7978)" when the samples stop early.
_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZE = 0xFFFFFFFF  # size written by streaming encoders that cannot seek back


def check_complete(info: sf.SoundFile | sf._SoundFileInfo, source: str) -> None:
    """Refuse a wav whose header promises more samples than the file holds (a cut-off download
    or copy), which libsndfile would otherwise read silently up to where the bytes stop."""
    match = _DATA_CHUNK.search(info.extra_info or "")
    if match is None or not str(info.format).startswith("WAV"):
        return
    declared, present = (int(g) for g in match.groups())
    if present < declared < _STREAMING_SIZE:
        raise ValueError(
            f"{source}: truncated wav: the header declares {declared} bytes of samples but the file "
            f"holds {present}; re-export or re-download it"
        )


def _read(handle, source: str) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(handle) as audio:
            check_complete(audio, source)
            return audio.read(dtype="float32", always_2d=False), audio.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{source}: cannot be decoded as audio ({err}); is it a valid wav/flac/ogg file?") from err


def load_audio(
    path: str | Path, sample_rate: int | None = None, resample: bool = True,
    channels: ChannelPolicy = "mean",
) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 ``(T,)`` and its rate (``sample_rate`` if given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    wav, rate = _read(str(path), str(path))
    return _finish(wav, rate, str(path), sample_rate, resample, channels)


def decode_audio(
    data: bytes, source: str = "<bytes>", sample_rate: int | None = None, resample: bool = True,
    channels: ChannelPolicy = "mean",
) -> tuple[np.ndarray, int]:
    """``load_audio`` for in-memory file contents (e.g. a member of a tar archive)."""
    if not data:
        raise ValueError(f"{source}: the file is empty (0 bytes)")
    wav, rate = _read(io.BytesIO(data), source)
    return _finish(wav, rate, source, sample_rate, resample, channels)


def write_audio(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write mono ``(T,)`` or ``(C, T)`` float audio as 16-bit PCM wav."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    path = Path(path)
    with atomic_path(path) as tmp:  # never a half-written wav, even if the write fails
        sf.write(str(tmp), wav.T if wav.ndim == 2 else wav, sample_rate, subtype="PCM_16")
    return path
