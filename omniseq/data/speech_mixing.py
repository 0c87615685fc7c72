"""Building speech mixtures from specs: utterances by speaker, placement, augmentation, noise.

A mixture is described by a spec (a dict, one row of a mixture list), so that
val/test lists can be written as CSV and re-read, and training mixtures can be
drawn from ``(seed, epoch, index)`` alone. ``build_mixture`` turns a spec into
``{"mixture": (T,), "sources": (S, T)}``; ``overlap_ratio`` measures how much of
the shorter utterance the other one overlaps.

Placement (``spec["overlap"]``):
- ``"min"``: Libri2Mix's min mode (Cosentino et al. 2020, https://arxiv.org/abs/2005.11262):
  every utterance starts at 0 and the mixture is cut to the shortest one, so the
  speakers overlap fully; longer than ``spec["length"]`` is cropped at ``crop_fraction``;
- ``"max"``: every utterance starts at 0, the shorter ones are zero-padded to the longest;
- ``"partial"``: the older FSDD protocol: each utterance at a random offset in a segment
  of ``spec["length"]`` samples (``crops``/``offsets``), so overlap varies from none to full.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omniseq.data.registry import resolve_dataset
from omniseq.domains.audio.augment import (
    exponential_rir,
    noise_at_snr,
    pitch_shift,
    reverberate,
    speed_perturb,
)
from omniseq.domains.audio.io import decode_audio, load_audio
from omniseq.domains.audio.synthetic import synthetic_voice

__all__ = ["OVERLAP_MODES", "Utterance", "UtteranceBank", "build_mixture", "overlap_ratio", "pad_collate"]

OVERLAP_MODES = ("min", "max", "partial")
FSDD_PATTERN = r"^(?P<label>[^_/]+)_(?P<speaker>[^_/]+)_(?P<index>\d+)\.wav$"
_SYNTHETIC_SPEAKERS, _SYNTHETIC_UTTERANCES = 8, 50


@dataclass(frozen=True)
class Utterance:
    key: str
    speaker: str
    index: int


class UtteranceBank:
    """Utterances by key, decoded once and cached (mono float32 at ``sample_rate``).

    ``fingerprint`` identifies the data (file names and sizes, or the synthetic
    voices' seed), so mixture lists drawn from other data are never reused.
    """

    def __init__(self, speech: str | None, sample_rate: int, name_pattern: str = FSDD_PATTERN, seed: int = 0) -> None:
        self.sample_rate, self.seed = sample_rate, seed
        self._cache: dict[str, np.ndarray] = {}
        self._pattern = re.compile(name_pattern)
        self.source = "synthetic" if speech is None else str(speech)
        if speech is None:
            self.utterances = [
                Utterance(f"synthetic/{s}/{i}", f"voice{s}", i)
                for s in range(_SYNTHETIC_SPEAKERS) for i in range(_SYNTHETIC_UTTERANCES)
            ]
            self.fingerprint = _digest(["synthetic", seed, sample_rate])
            return
        path = resolve_dataset(speech)
        if path.is_dir():
            sizes = {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*.wav")}
            self._root, self._archive = path, None
        elif tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                           if m.isfile() and m.name.lower().endswith(".wav")}
            sizes = {name: len(data) for name, data in members.items()}
            self._root, self._archive = None, members
        else:
            raise ValueError(f"{path}: speech must be a folder of wavs or a tar archive of wavs")
        if not sizes:
            raise ValueError(f"{path}: no .wav files found")
        names = sorted(sizes)
        self.utterances = self._parse(names)
        self.fingerprint = _digest([[n, sizes[n]] for n in names] + [sample_rate, name_pattern])

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    def _parse(self, names: Sequence[str]) -> list[Utterance]:
        rank: dict[str, int] = {}
        out = []
        for name in names:
            match = self._pattern.match(Path(name).name)
            if match:
                out.append(Utterance(name, match["speaker"], int(match["index"])))
            else:
                speaker = str(Path(name).parent)
                rank[speaker] = rank.get(speaker, -1) + 1
                out.append(Utterance(name, speaker, rank[speaker]))
        return out

    def load(self, key: str) -> np.ndarray:
        if key not in self._cache:
            if key.startswith("synthetic/"):
                _, speaker, index = key.split("/")
                wav = synthetic_voice(int(speaker), int(index), self.sample_rate, self.seed)
            elif self._archive is not None:
                wav, _ = decode_audio(self._archive[key], f"{self.source}:{key}", self.sample_rate)
            else:
                wav, _ = load_audio(self._root / key, self.sample_rate)
            self._cache[key] = wav
        return self._cache[key]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _utterance(bank: UtteranceBank, spec: dict, i: int) -> np.ndarray:
    """Utterance ``i`` of the spec at unit power, speed- and pitch-perturbed as the spec says."""
    wav = bank.load(spec["keys"][i]).astype(np.float64)
    wav = wav / (np.sqrt(np.mean(wav**2)) + 1e-8)
    if spec.get("speeds"):
        wav = speed_perturb(wav, spec["speeds"][i], bank.sample_rate)
    if spec.get("pitches"):
        wav = pitch_shift(wav, spec["pitches"][i], bank.sample_rate)
    return wav


def _place(waves: list[np.ndarray], spec: dict) -> np.ndarray:
    mode, length = spec.get("overlap", "partial"), spec["length"]
    if mode == "partial":
        sources = np.zeros((len(waves), length))
        for i, wav in enumerate(waves):
            crop, offset = spec["crops"][i], spec["offsets"][i]
            piece = wav[crop : crop + length - offset]
            sources[i, offset : offset + len(piece)] = piece
        return sources
    if mode not in OVERLAP_MODES:
        raise ValueError(f"overlap must be one of {OVERLAP_MODES}, got {mode!r}")
    span = (min if mode == "min" else max)(len(w) for w in waves)
    sources = np.zeros((len(waves), span))
    for i, wav in enumerate(waves):
        sources[i, : min(len(wav), span)] = wav[:span]
    start = int(spec.get("crop_fraction", 0.0) * max(span - length, 0))
    return sources[:, start : start + length]


def build_mixture(spec: dict, bank: UtteranceBank, noises: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The mixture and its sources for one spec (see the module doc for the fields)."""
    sources = _place([_utterance(bank, spec, i) for i in range(len(spec["keys"]))], spec)
    sources *= 10 ** (np.asarray(spec["gains_db"], dtype=np.float64)[:, None] / 20)
    for i, rt60 in enumerate(spec.get("rt60s") or []):
        if rt60 > 0:  # each speaker at its own position in one room: own RIR, same decay
            sources[i] = reverberate(sources[i], exponential_rir(rt60, bank.sample_rate, spec["rir_seed"] + i))
    mixture = sources.sum(0)
    if spec.get("noise"):
        signal = noises[spec["noise"]]
        # wrap around noise clips shorter than the segment
        noise = signal[(spec["noise_start"] + np.arange(mixture.shape[0])) % len(signal)].astype(np.float64)
        mixture = mixture + noise_at_snr(mixture, noise, spec["snr_db"])
    factor = spec.get("peak", 0.9) / (np.abs(mixture).max() + 1e-8)
    return {
        "mixture": torch.from_numpy((mixture * factor).astype(np.float32)),
        "sources": torch.from_numpy((sources * factor).astype(np.float32)),
    }


def overlap_ratio(sources: np.ndarray | torch.Tensor, threshold: float = 0.0) -> float:
    """Overlap of two sources' active spans (first to last sample above ``threshold``),
    as a fraction of the shorter span: 0 for turns that never meet, 1 when one speaks
    entirely while the other does."""
    sources = np.asarray(sources)
    if sources.shape[0] != 2:
        raise ValueError(f"overlap_ratio measures two sources, got {sources.shape[0]}")
    spans = []
    for s in sources:
        active = np.flatnonzero(np.abs(s) > threshold)
        if active.size == 0:
            return 0.0
        spans.append((active[0], active[-1] + 1))
    shared = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])
    return max(shared, 0) / min(b - a for a, b in spans)


def pad_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack mixtures of different lengths, zero-padding each to the longest (silence in all)."""
    length = max(item["mixture"].shape[-1] for item in items)
    pad = lambda x: torch.nn.functional.pad(x, (0, length - x.shape[-1]))  # noqa: E731
    return {"mixture": torch.stack([pad(i["mixture"]) for i in items]),
            "sources": torch.stack([pad(i["sources"]) for i in items])}
