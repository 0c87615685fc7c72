"""Speech separation data: utterances grouped by speaker, mixed on the fly.

Sources of utterances (``speech``, and ``test_speech`` for a test folder apart):
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
file feeds training, the last 20% val/test; ``unseen_noise`` files never train.

Unseen speakers (``fold`` or ``unseen_speakers``): those speakers never train.
The test lists are then ``seen`` (two training speakers), ``unseen`` (an unseen
speaker with any other) and, with ``unseen_noise``, ``unseen_noise`` (the unseen
mixtures plus a held-out noise at ``eval_snr_range_db``); val mixtures hold an
unseen speaker too (val indices), so checkpoints and recipes are chosen on
unseen speakers without touching the test utterances.

Each mixture (see ``omniseq.data.speech_mixing``): ``num_speakers`` distinct
speakers, every utterance normalised to unit power, speakers 2.. scaled by a
uniform relative level in ``level_range_db`` to speaker 1 ([-5, 5] dB: WSJ0-2mix's
0-5 dB level difference with a random louder speaker), placed by ``overlap``
(``"min"``: fully overlapped, Libri2Mix min mode), optional noise, then all
signals scaled together so the mixture peaks at 0.9. Training mixtures are drawn
from ``(seed, epoch, index)``, augmentations included: fresh every epoch, yet a
resumed fit sees the same ones. Validation and test mixtures are fixed lists,
written as CSV named by a hash of the data and options they were drawn from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from omniseq._files import atomic_path
from omniseq.data.augment import EpochTaggedSampler
from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import DatasetInfo, cache_dir, register_dataset, resolve_dataset
from omniseq.data.speech_mixing import (
    FSDD_PATTERN,
    OVERLAP_MODES,
    Utterance,
    UtteranceBank,
    _digest,
    build_mixture,
    overlap_ratio,
    pad_collate,
)
from omniseq.domains.audio.io import load_audio

__all__ = ["MixtureDataset", "SeparationDataModule", "UtteranceBank", "build_mixture", "overlap_ratio"]

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
STAGES = ("train", "val", "test")
_LIST_COLUMNS = ("keys", "crops", "offsets", "gains_db", "speeds", "pitches", "rt60s")
# Options that only shape training mixtures: they do not change the val/test lists.
_TRAINING_ONLY = {"segment_seconds", "num_train", "batch_size", "num_workers", "list_dir", "dynamic_mixing",
                  "speed_range", "pitch_range", "peak_range_db", "noise_prob", "reverb_prob", "rt60_range",
                  "snr_range_db"}


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


def _in(index: int, bounds: Sequence[int]) -> bool:
    return bounds[0] <= index < bounds[1]


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {tuple(value)}")
    return low, high


class SeparationDataModule(ResumableDataModuleMixin):
    """On-the-fly speech mixtures for separation; batches ``mixture (B, T)``, ``sources (B, S, T)``.

    Args:
        speech: None (synthetic voices), ``"fsdd"``, an archive or a folder (see module doc).
        noise: None, ``"speech_commands_background_noise"``, a folder, a file or a list of files.
        num_speakers: 2 or 3 speakers per mixture.
        sample_rate: rate of everything (files at other rates are resampled).
        segment_seconds: longest training mixture; ``eval_segment_seconds``: longest val/test one
            (with ``overlap="partial"``, the exact length of every mixture).
        overlap: ``"min"`` (fully overlapped, Libri2Mix min mode), ``"max"`` or ``"partial"``
            (random offsets, the older protocol); see ``omniseq.data.speech_mixing``.
        level_range_db: relative level of speakers 2.. to speaker 1.
        snr_range_db: speech-to-noise ratio of noisy training mixtures (and of the val/test
            lists when ``noise`` is set without unseen speakers).
        eval_snr_range_db: speech-to-noise ratio of the ``unseen_noise`` test list.
        test_indices, val_indices: half-open utterance-index ranges of test and
            val; every other index trains.
        fold: leave-one-speaker-out fold: the ``fold``-th speaker (sorted by name) never trains.
        unseen_speakers: speakers that never train (with or instead of ``fold``).
        unseen_noise: noise file names (e.g. ``exercise_bike.wav``) that never train; they
            make the ``unseen_noise`` test list.
        test_speech: a folder/archive for the test list instead of the test indices of ``speech``.
        dynamic_mixing: pair utterances afresh every epoch (else the same ``num_train`` pairs).
        speed_range: speed factor per training utterance (tempo and pitch, e.g. ``[0.9, 1.1]``).
        pitch_range: pitch shift per training utterance, semitones (length kept).
        peak_range_db: training mixture peak level in dBFS (random gain); None: peak 0.9.
        noise_prob: fraction of training mixtures with noise (when training noise exists).
        reverb_prob, rt60_range: fraction of training mixtures reverberated by synthetic
            exponentially decaying RIRs, and their RT60 in seconds (targets are the
            reverberant sources).
        num_train, num_val, num_test: mixtures per training epoch / in each fixed list.
        list_dir: where the val/test lists are written (and re-read when drawn from the same
            data and options); default ``$OMNISEQ_DATA/separation_lists/<source>-<speakers>spk-seed<seed>``.
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
        overlap: str = "partial",
        level_range_db: tuple[float, float] = (-5.0, 5.0),
        snr_range_db: tuple[float, float] = (0.0, 15.0),
        eval_snr_range_db: tuple[float, float] = (5.0, 15.0),
        test_indices: tuple[int, int] = (0, 5),
        val_indices: tuple[int, int] = (5, 8),
        fold: int | None = None,
        unseen_speakers: list[str] | None = None,
        unseen_noise: list[str] | None = None,
        test_speech: str | None = None,
        dynamic_mixing: bool = True,
        speed_range: tuple[float, float] = (1.0, 1.0),
        pitch_range: tuple[float, float] = (0.0, 0.0),
        peak_range_db: tuple[float, float] | None = None,
        noise_prob: float = 1.0,
        reverb_prob: float = 0.0,
        rt60_range: tuple[float, float] = (0.1, 0.5),
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
        if overlap not in OVERLAP_MODES:
            raise ValueError(f"overlap must be one of {OVERLAP_MODES}, got {overlap!r}")
        if not (0 <= noise_prob <= 1 and 0 <= reverb_prob <= 1):
            raise ValueError(f"noise_prob and reverb_prob must be in [0, 1], got {noise_prob} and {reverb_prob}")
        if test_speech is not None and (fold is not None or unseen_speakers):
            raise ValueError("test_speech draws the test list from another folder; it cannot be combined "
                             "with fold/unseen_speakers (which draw seen/unseen lists from speech)")
        self.save_hyperparameters()
        self.speech, self.noise, self.num_speakers, self.sample_rate = speech, noise, num_speakers, sample_rate
        self.segment = int(round(segment_seconds * sample_rate))
        self.eval_segment = int(round(eval_segment_seconds * sample_rate))
        self.overlap = overlap
        self.level_range_db, self.snr_range_db = _pair(level_range_db, "level_range_db"), _pair(snr_range_db, "snr_range_db")
        self.eval_snr_range_db = _pair(eval_snr_range_db, "eval_snr_range_db")
        self.test_indices, self.val_indices = tuple(test_indices), tuple(val_indices)
        self.fold, self.unseen_speakers = fold, list(unseen_speakers or [])
        self.unseen_noise, self.test_speech = list(unseen_noise or []), test_speech
        self.dynamic_mixing = dynamic_mixing
        self.speed_range, self.pitch_range = _pair(speed_range, "speed_range"), _pair(pitch_range, "pitch_range")
        self.peak_range_db = None if peak_range_db is None else _pair(peak_range_db, "peak_range_db")
        self.noise_prob, self.reverb_prob, self.rt60_range = noise_prob, reverb_prob, _pair(rt60_range, "rt60_range")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.name_pattern = name_pattern
        self._list_dir = list_dir
        # min/max mixtures have the lengths of their utterances: evaluate each at its own length
        self.eval_batch_size = None if overlap == "partial" else 1
        self.test_split = "unseen" if self.heldout else "test"
        self.bank: UtteranceBank | None = None
        self.test_bank: UtteranceBank | None = None
        self.seen_speakers: list[str] = []
        self.datasets: dict[str, MixtureDataset] = {}

    @property
    def heldout(self) -> bool:
        """Whether some speakers never train (the seen/unseen protocol)."""
        return self.fold is not None or bool(self.unseen_speakers)

    @property
    def test_sets(self) -> list[str]:
        """Names of the test lists, in the order of ``test_dataloader``."""
        if not self.heldout:
            return ["test"]
        return ["seen", "unseen"] + (["unseen_noise"] if self.unseen_noise else [])

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

    def _split_speakers(self) -> list[str]:
        """The unseen speakers (checked against the data); sets ``seen_speakers``."""
        speakers = self.bank.speakers
        unseen = list(self.unseen_speakers)
        if self.fold is not None:
            if not 0 <= self.fold < len(speakers):
                raise ValueError(f"fold must be in [0, {len(speakers)}) for the {len(speakers)} speakers of "
                                 f"{self.bank.source} ({', '.join(speakers)}), got {self.fold}")
            unseen.append(speakers[self.fold])
        missing = sorted(set(unseen) - set(speakers))
        if missing:
            raise ValueError(f"unseen_speakers {missing} are not speakers of {self.bank.source} "
                             f"(its speakers: {', '.join(speakers)})")
        self.seen_speakers = [s for s in speakers if s not in unseen]
        if len(self.seen_speakers) < self.num_speakers:
            raise ValueError(f"{self.bank.source}: holding out {sorted(set(unseen))} leaves "
                             f"{len(self.seen_speakers)} training speaker(s), fewer than num_speakers={self.num_speakers}")
        return sorted(set(unseen))

    def _load_noises(self) -> dict[str, dict[str, np.ndarray]]:
        """Noise signals: the first 80% of each file trains and the rest evaluates, except
        ``unseen_noise`` files, which are kept whole for the ``unseen_noise`` list."""
        out: dict[str, dict[str, np.ndarray]] = {"train": {}, "eval": {}, "unseen": {}}
        paths = _noise_paths(self.noise)
        missing = sorted(set(self.unseen_noise) - {p.name for p in paths})
        if missing:
            raise ValueError(f"unseen_noise {missing} are not among the noise files "
                             f"({', '.join(p.name for p in paths) or 'none: set noise'})")
        for path in paths:
            wav, _ = load_audio(path, self.sample_rate)
            if path.name in self.unseen_noise:
                out["unseen"][path.name] = wav
                continue
            cut = int(0.8 * len(wav))
            out["train"][path.name], out["eval"][path.name] = wav[:cut], wav[cut:]
        return out

    # -- mixture specs ---------------------------------------------------------

    def _draw_spec(self, rng: np.random.Generator, by_speaker: dict[str, list[Utterance]], length: int,
                   noises: dict[str, np.ndarray], bank: UtteranceBank, first: Sequence[str] = (),
                   snr_range: tuple[float, float] | None = None) -> dict:
        """One mixture: speakers (the first from ``first`` when given), utterances, placement,
        levels and noise. ``partial`` draws exactly as the older protocol did."""
        speakers = sorted(by_speaker)
        if first:
            lead = sorted(first)[rng.integers(len(first))]
            others = [s for s in speakers if s != lead]
            chosen = [lead] + [others[i] for i in rng.choice(len(others), size=self.num_speakers - 1, replace=False)]
        else:
            chosen = [speakers[i] for i in rng.choice(len(speakers), size=self.num_speakers, replace=False)]
        keys, crops, offsets = [], [], []
        for speaker in chosen:
            utterance = by_speaker[speaker][rng.integers(len(by_speaker[speaker]))]
            keys.append(utterance.key)
            if self.overlap == "partial":
                n = len(bank.load(utterance.key))
                crops.append(int(rng.integers(0, n - length + 1)) if n > length else 0)
                offsets.append(int(rng.integers(0, length - n + 1)) if n < length else 0)
            else:
                crops.append(0)
                offsets.append(0)
        gains = [0.0] + [float(rng.uniform(*self.level_range_db)) for _ in range(self.num_speakers - 1)]
        spec = {"keys": keys, "crops": crops, "offsets": offsets, "gains_db": gains, "length": length,
                "noise": "", "noise_start": 0, "snr_db": 0.0}
        if self.overlap != "partial":
            spec.update(overlap=self.overlap, crop_fraction=float(rng.uniform()))
        if noises and (self.noise_prob >= 1 or rng.uniform() < self.noise_prob):
            name = sorted(noises)[rng.integers(len(noises))]
            spec.update(noise=name, noise_start=int(rng.integers(0, max(len(noises[name]) - length, 0) + 1)),
                        snr_db=float(rng.uniform(*(snr_range or self.snr_range_db))))
        return spec

    def _augment(self, spec: dict, rng: np.random.Generator) -> dict:
        """Training augmentation drawn into the spec: speed, pitch, reverberation, peak level."""
        count = len(spec["keys"])
        if self.speed_range != (1.0, 1.0):
            spec["speeds"] = [float(rng.uniform(*self.speed_range)) for _ in range(count)]
        if self.pitch_range != (0.0, 0.0):
            spec["pitches"] = [float(rng.uniform(*self.pitch_range)) for _ in range(count)]
        if self.reverb_prob > 0 and rng.uniform() < self.reverb_prob:
            spec["rt60s"] = [float(rng.uniform(*self.rt60_range))] * count  # one room
            spec["rir_seed"] = int(rng.integers(2**31))
        if self.peak_range_db is not None:
            spec["peak"] = float(10 ** (rng.uniform(*self.peak_range_db) / 20))
        return spec

    def _groups(self, bank: UtteranceBank, split: str | None, speakers: Sequence[str] | None = None,
                stage: str = "") -> dict[str, list[Utterance]]:
        """Utterances by speaker of ``split`` (None: all indices) among ``speakers`` (None: all)."""
        groups: dict[str, list[Utterance]] = {}
        for u in bank.utterances:
            if (split is None or self.split_of(u.index) == split) and (speakers is None or u.speaker in speakers):
                groups.setdefault(u.speaker, []).append(u)
        if len(groups) < self.num_speakers:
            raise ValueError(
                f"{bank.source}: the {stage or split} split has {len(groups)} speaker(s), fewer than "
                f"num_speakers={self.num_speakers} (check test_indices/val_indices, fold/unseen_speakers and name_pattern)"
            )
        return groups

    def _list_path(self, stage: str, noises: dict[str, dict[str, np.ndarray]]) -> Path:
        """``<stage>-<hash>.csv``: the hash covers the data (file names and sizes, noise
        clips) and every option that shapes the list, so a list is reused only for the
        same data and options."""
        bank = self.test_bank if stage == "test" else self.bank
        options = {k: v for k, v in self.hparams.items() if k not in _TRAINING_ONLY}
        noise = {name: len(wav) for kind in ("eval", "unseen") for name, wav in noises[kind].items()}
        return self.list_dir / f"{stage}-{_digest([bank.fingerprint, noise, options, stage])[:12]}.csv"

    def _read_specs(self, path: Path, size: int) -> list[dict] | None:
        """The fixed list at ``path``, or None when absent or of another size."""
        if not path.is_file():
            return None
        frame = pd.read_csv(path, keep_default_na=False)
        if len(frame) != size:
            return None
        return [{c: json.loads(row[c]) if c in _LIST_COLUMNS else row[c]
                 for c in frame.columns if c != "mixture_id"} for _, row in frame.iterrows()]

    def _draw_list(self, stage: str, noises: dict[str, dict[str, np.ndarray]], unseen: list[str]) -> list[dict]:
        rng = np.random.default_rng([self.seed, (*STAGES, "seen", "unseen").index(stage), 2024])
        size = self.sizes["val" if stage == "val" else "test"]
        bank = self.test_bank if stage == "test" else self.bank
        heldout_noise = {} if unseen else noises["eval"]  # clean lists in the seen/unseen protocol
        if stage == "test" and self.test_speech is not None:
            groups, first = self._groups(bank, None, stage="test_speech"), ()
        else:
            split = "val" if stage == "val" else "test"
            groups = self._groups(bank, split, self.seen_speakers if stage == "seen" else None, stage)
            first = unseen if stage in ("val", "unseen") else ()
        return [self._draw_spec(rng, groups, self.eval_segment, heldout_noise, bank, first) for _ in range(size)]

    def _with_unseen_noise(self, specs: list[dict], noises: dict[str, np.ndarray]) -> list[dict]:
        """The unseen mixtures again, each with a held-out noise at ``eval_snr_range_db``."""
        rng = np.random.default_rng([self.seed, 7, 2024])
        names = sorted(noises)
        out = []
        for spec in specs:
            name = names[rng.integers(len(names))]
            start = int(rng.integers(0, max(len(noises[name]) - self.eval_segment, 0) + 1))
            out.append({**spec, "noise": name, "noise_start": start, "snr_db": float(rng.uniform(*self.eval_snr_range_db))})
        return out

    def _write_specs(self, path: Path, specs: list[dict]) -> None:
        rows = [{"mixture_id": i, **{k: json.dumps(v) if isinstance(v, list) else v for k, v in s.items()}}
                for i, s in enumerate(specs)]
        with atomic_path(path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

    def _fixed_specs(self, noises: dict[str, dict[str, np.ndarray]], unseen: list[str]) -> dict[str, list[dict]]:
        """Val and test lists: read when present, else drawn (decoding every utterance they use)
        and only then written, so a bad file leaves no list behind."""
        stages = ["val", *(s for s in self.test_sets if s != "unseen_noise")]
        paths = {stage: self._list_path(stage, noises) for stage in self.test_sets + ["val"]}
        sizes = {stage: self.sizes["val" if stage == "val" else "test"] for stage in paths}
        specs = {stage: self._read_specs(paths[stage], sizes[stage]) for stage in paths}
        drawn = {stage: self._draw_list(stage, noises, unseen) for stage in stages if specs[stage] is None}
        if "unseen_noise" in specs and specs["unseen_noise"] is None:
            drawn["unseen_noise"] = self._with_unseen_noise(drawn.get("unseen") or specs["unseen"], noises["unseen"])
        for stage, stage_specs in drawn.items():
            self._write_specs(paths[stage], stage_specs)
        return {**specs, **drawn}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.bank = UtteranceBank(self.speech, self.sample_rate, self.name_pattern, self.seed)
        self.test_bank = (self.bank if self.test_speech is None
                          else UtteranceBank(self.test_speech, self.sample_rate, self.name_pattern, self.seed))
        noises = self._load_noises()
        unseen = self._split_speakers()
        train_groups = self._groups(self.bank, "train", self.seen_speakers)

        def sample_train(epoch: int, index: int) -> dict:
            # pairs from (seed, epoch, index), or (seed, 0, index) without dynamic mixing;
            # augmentation always from (seed, epoch, index)
            rng = np.random.default_rng([self.seed, epoch if self.dynamic_mixing else 0, index, 1])
            spec = self._draw_spec(rng, train_groups, self.segment, noises["train"], self.bank)
            return self._augment(spec, np.random.default_rng([self.seed, epoch, index, 2]))

        self.datasets["train"] = MixtureDataset(self.bank, noises["train"], sampler=sample_train, size=self.sizes["train"])
        eval_noises = {**noises["eval"], **noises["unseen"]}
        for name, specs in self._fixed_specs(noises, unseen).items():
            bank = self.test_bank if name == "test" else self.bank
            self.datasets[name] = MixtureDataset(bank, eval_noises, specs=specs)

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        loader.collate_fn = pad_collate  # min/max mixtures differ in length
        return loader

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self.eval_dataloader(name) for name in self.test_sets]
        return loaders[0] if len(loaders) == 1 else loaders

    def overlap_stats(self, name: str) -> dict[str, float]:
        """Overlap of the two speakers in list ``name``, as a fraction of the shorter
        utterance (``overlap_ratio``): the mean, and the fractions with none and full overlap."""
        if self.num_speakers != 2:
            raise ValueError("overlap_stats measures 2-speaker lists")
        self.setup()
        ratios = np.array([overlap_ratio(self.datasets[name][i]["sources"]) for i in range(len(self.datasets[name]))])
        return {"mixtures": len(ratios), "mean": float(ratios.mean()), "none": float(np.mean(ratios == 0)),
                "full": float(np.mean(ratios >= 0.999))}
