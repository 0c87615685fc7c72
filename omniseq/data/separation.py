"""Speech separation data: utterances grouped by speaker, mixed on the fly.

Sources of utterances (``speech``):
- None: synthetic harmonic voices (``omniseq.domains.audio.synthetic_voice``),
  8 speakers x 50 utterances, seeded; needs no download;
- ``"fsdd"`` (registered) or any ``.tar``/``.tar.gz`` archive of wavs, read
  in place with ``tarfile``;
- a folder of wavs, searched recursively.
A file's speaker and utterance index come from ``name_pattern`` (default:
FSDD's ``{digit}_{speaker}_{index}.wav``); files that do not match take their
parent folder as speaker and their rank in that folder as index.

Splits by utterance index (FSDD's protocol: 0-4 test, 5-49 train; val is
carved from the training indices, 5-7 by default), so the three are disjoint.
Noise files (optional) are cut the same way by time: the first 80% of each
file feeds training, the last 20% val/test.

Each mixture: ``num_speakers`` distinct speakers, every utterance normalised to
unit power, speakers 2.. scaled by a uniform relative level in
``level_range_db`` to speaker 1, placed at a random offset in a fixed-length
segment (cropped at random if longer), optional noise at a uniform SNR in
``snr_range_db`` to the speech, then all signals scaled together so the
mixture peaks at 0.9. Training mixtures are drawn from ``(seed, epoch, index)``:
fresh every epoch, yet a resumed fit sees the same ones; validation and test
mixtures are fixed lists, written as CSV and re-read.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from omniseq._files import atomic_path
from omniseq.data.augment import EpochTaggedSampler
from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import DatasetInfo, cache_dir, register_dataset, resolve_dataset
from omniseq.domains.audio.io import decode_audio, load_audio
from omniseq.domains.audio.synthetic import synthetic_voice

__all__ = ["MixtureDataset", "SeparationDataModule", "UtteranceBank"]

register_dataset(DatasetInfo(
    "fsdd", "https://github.com/Jakobovski/free-spoken-digit-dataset (folder recordings/, as one tar.gz)",
    "4c5caadb3b222aa2a034ae3438f3453bdbc9a12522fe560c3b3059127a526ef4",
    "fsdd_recordings_george_jackson_lucas_nicolas.tar.gz", "fsdd",
    "Free Spoken Digit Dataset, speakers george/jackson/lucas/nicolas, 2000 wavs, 8 kHz",
))
_NOISE_URL = "https://download.tensorflow.org/data/speech_commands_v0.02.tar.gz (_background_noise_/)"
NOISE_FILES = {
    "doing_the_dishes.wav": "0bd0e1871727560369c5bc59041713714e06e998fb2c75913c39eeba24f5f249",
    "exercise_bike.wav": "9a18c2a48248aa5000c27d86f8c7a1070474b9d2aa3b115ab50274de81bb291d",
    "pink_noise.wav": "dd7d4cb7df1cad6845af16426090af617d21e4a3aae28776e568d811bb126363",
    "white_noise.wav": "c80270ff6d23f7aecc397ce923a6ca554157bb733d1013cd1d9391c15671b102",
}
for _file, _sha in NOISE_FILES.items():
    register_dataset(DatasetInfo(
        f"speech_commands_noise_{Path(_file).stem}", _NOISE_URL, _sha, _file,
        "speech_commands_background_noise", "Speech Commands background noise, 16 kHz",
    ))
NOISE_SET = "speech_commands_background_noise"
FSDD_PATTERN = r"^(?P<label>[^_/]+)_(?P<speaker>[^_/]+)_(?P<index>\d+)\.wav$"
_SYNTHETIC_SPEAKERS, _SYNTHETIC_UTTERANCES = 8, 50
STAGES = ("train", "val", "test")


@dataclass(frozen=True)
class Utterance:
    key: str
    speaker: str
    index: int


class UtteranceBank:
    """Utterances by key, decoded once and cached (mono float32 at ``sample_rate``)."""

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
            return
        path = resolve_dataset(speech)
        if path.is_dir():
            names = sorted(str(p.relative_to(path)) for p in path.rglob("*.wav"))
            self._root, self._archive = path, None
        elif tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                           if m.isfile() and m.name.lower().endswith(".wav")}
            names, self._root, self._archive = sorted(members), None, members
        else:
            raise ValueError(f"{path}: speech must be a folder of wavs or a tar archive of wavs")
        if not names:
            raise ValueError(f"{path}: no .wav files found")
        self.utterances = self._parse(names)

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


def _noise_paths(noise: str | Sequence[str] | None) -> list[Path]:
    if noise is None:
        return []
    if isinstance(noise, str) and noise == NOISE_SET:
        return [resolve_dataset(f"speech_commands_noise_{Path(f).stem}") for f in NOISE_FILES]
    items = [noise] if isinstance(noise, str) else list(noise)
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        paths += sorted(path.rglob("*.wav")) if path.is_dir() else [resolve_dataset(item)]
    if not paths:
        raise ValueError(f"noise {noise!r}: no .wav files found")
    return paths


class MixtureDataset(Dataset):
    """Mixtures from specs (one dict per mixture) -> ``{"mixture": (T,), "sources": (S, T)}``."""

    def __init__(self, bank: UtteranceBank, noises: dict[str, np.ndarray], specs=None, sampler=None, size: int = 0) -> None:
        self.bank, self.noises, self.specs, self.sampler = bank, noises, specs, sampler
        self.size = len(specs) if specs is not None else size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """``item`` is an index into the specs, or ``(epoch, index)`` for drawn mixtures
        (from ``EpochTaggedSampler``; a plain index means epoch 0)."""
        if self.specs is not None:
            return build_mixture(self.specs[item], self.bank, self.noises)
        epoch, index = item if isinstance(item, tuple) else (0, item)
        return build_mixture(self.sampler(epoch, index), self.bank, self.noises)


def build_mixture(spec: dict, bank: UtteranceBank, noises: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    length = spec["length"]
    sources = np.zeros((len(spec["keys"]), length), dtype=np.float64)
    for i, (key, crop, offset, gain) in enumerate(zip(spec["keys"], spec["crops"], spec["offsets"], spec["gains_db"], strict=True)):
        wav = bank.load(key).astype(np.float64)
        wav = wav / (np.sqrt(np.mean(wav**2)) + 1e-8)
        piece = wav[crop : crop + length - offset]
        sources[i, offset : offset + len(piece)] = piece * 10 ** (gain / 20)
    mixture = sources.sum(0)
    if spec.get("noise"):
        signal = noises[spec["noise"]]
        # wrap around noise clips shorter than the segment
        noise = signal[(spec["noise_start"] + np.arange(length)) % len(signal)].astype(np.float64)
        scale = np.sqrt(np.mean(mixture**2) / (np.mean(noise**2) + 1e-12) / 10 ** (spec["snr_db"] / 10))
        mixture = mixture + scale * noise
    peak = np.abs(mixture).max() + 1e-8
    factor = 0.9 / peak
    return {
        "mixture": torch.from_numpy((mixture * factor).astype(np.float32)),
        "sources": torch.from_numpy((sources * factor).astype(np.float32)),
    }


def _in(index: int, bounds: Sequence[int]) -> bool:
    return bounds[0] <= index < bounds[1]


class SeparationDataModule(ResumableDataModuleMixin):
    """On-the-fly speech mixtures for separation; batches ``mixture (B, T)``, ``sources (B, S, T)``.

    Args:
        speech: None (synthetic voices), ``"fsdd"``, an archive or a folder (see module doc).
        noise: None, ``"speech_commands_background_noise"``, a folder, a file or a list of files.
        num_speakers: 2 or 3 speakers per mixture.
        sample_rate: rate of everything (files at other rates are resampled).
        segment_seconds: length of training mixtures; ``eval_segment_seconds`` of val/test ones.
        level_range_db: relative level of speakers 2.. to speaker 1.
        snr_range_db: speech-to-noise ratio range when ``noise`` is set.
        test_indices, val_indices: half-open utterance-index ranges of test and
            val; every other index trains.
        num_train, num_val, num_test: mixtures per training epoch / in the fixed lists.
        list_dir: where ``val.csv``/``test.csv`` are written (and re-read when present);
            default ``$OMNISEQ_DATA/separation_lists/<source>-<speakers>spk-seed<seed>``.
        name_pattern: regex with ``speaker`` and ``index`` groups for file names.
    """

    train_sampler_class = EpochTaggedSampler  # fresh mixtures every epoch, drawn from (seed, epoch, index)

    def __init__(
        self,
        speech: str | None = None,
        noise: str | list[str] | None = None,
        num_speakers: int = 2,
        sample_rate: int = 8000,
        segment_seconds: float = 1.0,
        eval_segment_seconds: float = 1.5,
        level_range_db: tuple[float, float] = (-5.0, 5.0),
        snr_range_db: tuple[float, float] = (0.0, 15.0),
        test_indices: tuple[int, int] = (0, 5),
        val_indices: tuple[int, int] = (5, 8),
        num_train: int = 2000,
        num_val: int = 100,
        num_test: int = 300,
        batch_size: int = 8,
        num_workers: int = 0,
        list_dir: str | None = None,
        name_pattern: str = FSDD_PATTERN,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_speakers not in (2, 3):
            raise ValueError(f"num_speakers must be 2 or 3, got {num_speakers}")
        if segment_seconds <= 0 or eval_segment_seconds <= 0:
            raise ValueError("segment_seconds and eval_segment_seconds must be positive")
        self.save_hyperparameters()
        self.speech, self.noise, self.num_speakers, self.sample_rate = speech, noise, num_speakers, sample_rate
        self.segment = int(round(segment_seconds * sample_rate))
        self.eval_segment = int(round(eval_segment_seconds * sample_rate))
        self.level_range_db, self.snr_range_db = tuple(level_range_db), tuple(snr_range_db)
        self.test_indices, self.val_indices = tuple(test_indices), tuple(val_indices)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.name_pattern = name_pattern
        self._list_dir = list_dir
        self.bank: UtteranceBank | None = None
        self.datasets: dict[str, MixtureDataset] = {}

    # -- splits ----------------------------------------------------------------

    def split_of(self, index: int) -> str:
        if _in(index, self.test_indices):
            return "test"
        return "val" if _in(index, self.val_indices) else "train"

    @property
    def list_dir(self) -> Path:
        if self._list_dir is not None:
            return Path(self._list_dir)
        source = "synthetic" if self.speech is None else Path(str(self.speech)).name.split(".")[0]
        noisy = "-noisy" if self.noise else ""
        return cache_dir() / "separation_lists" / f"{source}-{self.num_speakers}spk{noisy}-seed{self.seed}"

    def _load_noises(self) -> dict[str, dict[str, np.ndarray]]:
        """Noise signals per stage: the first 80% of each file trains, the rest evaluates."""
        out: dict[str, dict[str, np.ndarray]] = {"train": {}, "eval": {}}
        for path in _noise_paths(self.noise):
            wav, _ = load_audio(path, self.sample_rate)
            cut = int(0.8 * len(wav))
            out["train"][path.name], out["eval"][path.name] = wav[:cut], wav[cut:]
        return out

    # -- mixture specs ---------------------------------------------------------

    def _draw_spec(self, rng: np.random.Generator, by_speaker: dict[str, list[Utterance]],
                   length: int, noises: dict[str, np.ndarray]) -> dict:
        speakers = sorted(by_speaker)
        chosen = rng.choice(len(speakers), size=self.num_speakers, replace=False)
        keys, crops, offsets = [], [], []
        for s in chosen:
            utterance = by_speaker[speakers[s]][rng.integers(len(by_speaker[speakers[s]]))]
            n = len(self.bank.load(utterance.key))
            keys.append(utterance.key)
            crops.append(int(rng.integers(0, n - length + 1)) if n > length else 0)
            offsets.append(int(rng.integers(0, length - n + 1)) if n < length else 0)
        gains = [0.0] + [float(rng.uniform(*self.level_range_db)) for _ in range(self.num_speakers - 1)]
        spec = {"keys": keys, "crops": crops, "offsets": offsets, "gains_db": gains, "length": length,
                "noise": "", "noise_start": 0, "snr_db": 0.0}
        if noises:
            name = sorted(noises)[rng.integers(len(noises))]
            spec.update(noise=name, noise_start=int(rng.integers(0, max(len(noises[name]) - length, 0) + 1)),
                        snr_db=float(rng.uniform(*self.snr_range_db)))
        return spec

    def _by_speaker(self, stage: str) -> dict[str, list[Utterance]]:
        groups: dict[str, list[Utterance]] = {}
        for u in self.bank.utterances:
            if self.split_of(u.index) == stage:
                groups.setdefault(u.speaker, []).append(u)
        if len(groups) < self.num_speakers:
            raise ValueError(
                f"{self.bank.source}: the {stage} split has {len(groups)} speaker(s), fewer than "
                f"num_speakers={self.num_speakers} (check test_indices/val_indices and name_pattern)"
            )
        return groups

    def _read_specs(self, stage: str) -> list[dict] | None:
        """The fixed list of ``stage`` from ``list_dir``, or None when absent or of another size."""
        path = self.list_dir / f"{stage}.csv"
        if not path.is_file():
            return None
        frame = pd.read_csv(path, keep_default_na=False)
        if len(frame) != self.sizes[stage]:
            return None
        return [{c: json.loads(row[c]) if c in ("keys", "crops", "offsets", "gains_db") else row[c]
                 for c in frame.columns if c != "mixture_id"} for _, row in frame.iterrows()]

    def _draw_specs(self, stage: str, noises: dict[str, np.ndarray]) -> list[dict]:
        rng = np.random.default_rng([self.seed, STAGES.index(stage), 2024])
        groups = self._by_speaker(stage)
        return [self._draw_spec(rng, groups, self.eval_segment, noises) for _ in range(self.sizes[stage])]

    def _write_specs(self, stage: str, specs: list[dict]) -> None:
        rows = [{"mixture_id": i, **{k: json.dumps(v) if isinstance(v, list) else v for k, v in s.items()}}
                for i, s in enumerate(specs)]
        with atomic_path(self.list_dir / f"{stage}.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

    def _fixed_specs(self, noises: dict[str, np.ndarray]) -> dict[str, list[dict]]:
        """Val and test lists: read when present, else drawn (decoding every utterance they use)
        and only then written, so a bad file leaves no list behind."""
        specs = {stage: self._read_specs(stage) for stage in ("val", "test")}
        drawn = {stage: self._draw_specs(stage, noises) for stage, found in specs.items() if found is None}
        for stage, stage_specs in drawn.items():
            self._write_specs(stage, stage_specs)
        return {**specs, **drawn}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.bank = UtteranceBank(self.speech, self.sample_rate, self.name_pattern, self.seed)
        noises = self._load_noises()
        train_groups = self._by_speaker("train")

        def sample_train(epoch: int, index: int) -> dict:
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            return self._draw_spec(rng, train_groups, self.segment, noises["train"])

        self.datasets["train"] = MixtureDataset(self.bank, noises["train"], sampler=sample_train, size=self.sizes["train"])
        for name, specs in self._fixed_specs(noises["eval"]).items():
            self.datasets[name] = MixtureDataset(self.bank, noises["eval"], specs=specs)

