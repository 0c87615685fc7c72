"""Genomics data: FASTA windows for pretraining and labelled sequences for classification.

Registered datasets (``omniseq list``): ``ecoli_k12`` (E. coli K-12 MG1655 chromosome,
RefSeq GCF_000005845.2), ``ecoli_k12_gff`` and the GUE tasks as ``gue_<task>_<split>``
(tasks ``prom_core_all``, ``prom_core_notata``, ``prom_core_tata``, ``prom_300_tata``,
``tf0`` .. ``tf4``; splits train/dev/test; DNABERT-2, Zhou et al. ICLR 2024).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset

from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import DatasetInfo, register_dataset, resolve_dataset
from omniseq.domains.genomics import NucleotideTokenizer, iter_sequences, read_labeled
from omniseq.domains.genomics.io import FASTA_SUFFIXES, FASTQ_SUFFIXES

__all__ = [
    "GUE_TASKS",
    "GenomePretrainDataModule",
    "SequenceClassificationDataModule",
    "genome_files",
    "gue_dataset_name",
    "synthetic_genome",
    "synthetic_labeled",
]


_NCBI = "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF/000/005/845/GCF_000005845.2_ASM584v2/"
_GUE_SOURCE = "https://github.com/wds-seu/DeepGene/tree/main/data/GUE/"
# (task, split, folder, sha256 of the gzip-compressed CSV as stored in ../shared/datasets/gue)
_GUE_FILES = (
    ("prom_300_tata", "dev", "gue/prom/prom_300_tata", "68218d4f8232059301210f9862276dfcf73b5f85bf70f0aa348761892057389f"),
    ("prom_300_tata", "test", "gue/prom/prom_300_tata", "4796068f6b582c80053771e39d040a123a0036045a711740fad0ff3924defbaa"),
    ("prom_300_tata", "train", "gue/prom/prom_300_tata", "ed6167422c9b56c707889464de85771364bdcfa7eb808562f39f44079cd1f041"),
    ("prom_core_all", "dev", "gue/prom/prom_core_all", "6cc037931626064bdf0b92f1a8ead10588f454be01c78fac7745130df61ea341"),
    ("prom_core_all", "test", "gue/prom/prom_core_all", "a4393b17220ef78b2a40f7abd7a9d0b56443e7dc752b7ba00322ea784611e348"),
    ("prom_core_all", "train", "gue/prom/prom_core_all", "a995ebd75e2cef2529a32cdb8f2dcad0803e2c9658c8925f52de33dbcb729692"),
    ("prom_core_notata", "dev", "gue/prom/prom_core_notata", "5e0ac395506b78946d2cacfd61a3376c0f42fd867a77d94bc8a372cf0e832a93"),
    ("prom_core_notata", "test", "gue/prom/prom_core_notata", "e60a721732a431518c599921592e408dceb775a38626422da1df97e2ae134809"),
    ("prom_core_notata", "train", "gue/prom/prom_core_notata", "3fd79ec2b6359ba5a676edbefe8f34defc7e8961d97ff5801ee170209223b4bf"),
    ("prom_core_tata", "dev", "gue/prom/prom_core_tata", "362102321fd2984fb168d095ec862c83f6e18889f0d2c645976f7d1159437a40"),
    ("prom_core_tata", "test", "gue/prom/prom_core_tata", "067248fa97a634bb8e67b53af78f4d54bfd5ce60c3375d12b8c98b0918c20b84"),
    ("prom_core_tata", "train", "gue/prom/prom_core_tata", "9b387ed5c3fd82ff08f80eb64a5af113a1dcf081b57ceb61f6a92cc47e530530"),
    ("tf0", "dev", "gue/tf/0", "b8fa2ec32cc8702336bd17d91c341fc288bc1ef47a35603649e1194b01d8317b"),
    ("tf0", "test", "gue/tf/0", "28eca4563e0688aad63a960f1ccb3a75ebb71e2d9690053e462fb344294f00b1"),
    ("tf0", "train", "gue/tf/0", "d3408c62eb3fbed81775eddb1b826304dbf52274db3d3ce64415fbcb4594243e"),
    ("tf1", "dev", "gue/tf/1", "db4475d22c8f752eae71a1bbebab2d87a5643c51c7f832a31a2cc2b6fd1e60e7"),
    ("tf1", "test", "gue/tf/1", "eeaa7220448442517b4dbe77cde10eee5ab6a5f382523fb70a22d53aa0eed66d"),
    ("tf1", "train", "gue/tf/1", "6cef419b57d7f7e96bcbaa0651d96359ae3066d63f9c789e611b56821d2aa2b1"),
    ("tf2", "dev", "gue/tf/2", "1d9a81d4692a033f5495ba9b90b3c91a725fbbcf73666b9d3935d047c908ed58"),
    ("tf2", "test", "gue/tf/2", "9c8459139c7d3391d1391659ceb6f55cb28ef6aea34236e08bc6eb9cd25caf59"),
    ("tf2", "train", "gue/tf/2", "014120994cd4f4d53fae2bf8d63e8d521e5e6f434902683dfa8ccafbf3f50349"),
    ("tf3", "dev", "gue/tf/3", "1c99e201e43d7ddc0c4ee795b144445f614d117eb9e6009e7a3e00d798ae5dd8"),
    ("tf3", "test", "gue/tf/3", "ae3a2d06fca01db5ab3f02d35e4ecf03e19a3ab2157671362eca37f0fcb13307"),
    ("tf3", "train", "gue/tf/3", "65b8567dd7cefc5c63c17ec9319ff8349e9c51d80cec29578f1f815f9910e7f0"),
    ("tf4", "dev", "gue/tf/4", "f392decdf823142a660bb9c00aa1eb02bc894ec581b451f9eee6e608b11dc392"),
    ("tf4", "test", "gue/tf/4", "88a7a9cad4bdfd0eac981066b3163421139845af7b1a7a1cefbdc02b8efa7b50"),
    ("tf4", "train", "gue/tf/4", "416b250397ffa8bfe423a98d25a95c50fed74cf946f8c18d3313e301d1c9681f"),
)
GUE_TASKS = tuple(dict.fromkeys(task for task, *_ in _GUE_FILES))


def gue_dataset_name(task: str, split: str) -> str:
    """Registry name of one GUE split; ``task`` may be ``prom_core_all``, ``tf0`` or ``tf/0``."""
    task = task.removeprefix("gue/").removeprefix("prom/").replace("tf/", "tf")
    if task not in GUE_TASKS:
        raise ValueError(f"unknown GUE task {task!r}; available: {list(GUE_TASKS)}")
    if split not in ("train", "dev", "test"):
        raise ValueError(f"GUE split must be train, dev or test, got {split!r}")
    return f"gue_{task}_{split}"


register_dataset(DatasetInfo(
    "ecoli_k12", _NCBI + "GCF_000005845.2_ASM584v2_genomic.fna.gz",
    "254606e2722f64ca0906dfc1d41bceac41be72c335627c23f831b007939c8a48",
    "GCF_000005845.2_ASM584v2_genomic.fna.gz", "ecoli_k12_genome",
    "E. coli K-12 MG1655 complete genome, 4,641,652 bp, gzip FASTA (Blattner et al. 1997)",
))
register_dataset(DatasetInfo(
    "ecoli_k12_gff", _NCBI + "GCF_000005845.2_ASM584v2_genomic.gff.gz",
    "f7da4447a53cd85a86438553cf28ac000f0cb36c4d9b01f41fee00715cc789e8",
    "GCF_000005845.2_ASM584v2_genomic.gff.gz", "ecoli_k12_genome",
    "NCBI RefSeq annotation of E. coli K-12 MG1655, gzip GFF3",
))
for _task, _split, _folder, _sha in _GUE_FILES:
    register_dataset(DatasetInfo(
        gue_dataset_name(_task, _split), _GUE_SOURCE + _folder.removeprefix("gue/") + f"/{_split}.csv",
        _sha, f"{_split}.csv.gz", _folder,
        f"GUE {_task} {_split} split (sequence,label CSV, gzip-compressed; DNABERT-2, ICLR 2024)",
    ))


# -- built-in data (no download) ------------------------------------------------


def synthetic_genome(length: int = 200_000, seed: int = 0, order: int = 3) -> str:
    """A seeded order-``order`` Markov chain over A C G T with peaked transitions,
    so a model can learn it (a masked-LM loss well below log 4 is reachable)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(4, 0.3), size=4**order)
    draws = rng.random(length)
    out = np.empty(length, dtype=np.int64)
    out[:order] = rng.integers(0, 4, order)
    context = int(sum(out[i] * 4 ** (order - 1 - i) for i in range(order)))
    cumulative = probs.cumsum(1)
    for i in range(order, length):
        base = int(np.searchsorted(cumulative[context], draws[i]))
        out[i] = min(base, 3)
        context = (context * 4 + out[i]) % 4**order
    return "".join(np.array(list("ACGT"))[out])


def synthetic_labeled(n: int, length: int = 80, seed: int = 0, motif: str = "TATAAT") -> tuple[list[str], list[int]]:
    """Random sequences; label 1 when ``motif`` (or its reverse complement) is planted at a random place."""
    rng = np.random.default_rng(seed)
    bases = np.array(list("ACGT"))
    sequences, labels = [], []
    rc_motif = motif.translate(str.maketrans("ACGT", "TGCA"))[::-1]
    for i in range(n):
        seq = "".join(bases[rng.integers(0, 4, length)])
        label = i % 2
        if label:
            start = int(rng.integers(0, length - len(motif)))
            planted = motif if rng.random() < 0.5 else rc_motif
            seq = seq[:start] + planted + seq[start + len(motif):]
        sequences.append(seq)
        labels.append(label)
    return sequences, labels


# -- pretraining on genome windows ---------------------------------------------


def genome_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The sequence files named by ``source``: a file, a registered dataset name, a folder
    (its FASTA/FASTQ files, gzipped or not, sorted by name), a glob pattern, or a list of these."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("path: an empty list of files")
        return [file for item in source for file in genome_files(item)]
    text = str(source)
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        files = sorted(f for f in candidate.iterdir() if f.is_file() and _is_sequence_file(f))
        if not files:
            raise FileNotFoundError(
                f"{candidate}: the folder holds no FASTA/FASTQ file (names ending in "
                f"{', '.join(SEQUENCE_SUFFIXES)}, optionally .gz)"
            )
        return files
    if any(char in text for char in "*?[") and not candidate.exists():
        files = sorted(Path(f) for f in glob.glob(str(candidate), recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"{text}: the pattern matches no file")
        return files
    return [resolve_dataset(text)]


SEQUENCE_SUFFIXES = (*FASTA_SUFFIXES, *FASTQ_SUFFIXES)


def _is_sequence_file(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith(SEQUENCE_SUFFIXES)


def n_token_ids(tokenizer: NucleotideTokenizer) -> np.ndarray:
    """Token ids that stand for an unknown base (N; k-mers holding one are [UNK])."""
    if tokenizer.mode == "char":
        return np.array([tokenizer.num_special + 4])
    if tokenizer.mode == "kmer":
        return np.array([tokenizer.unk_id])
    return np.array([tokenizer.num_special + ord("N"), tokenizer.num_special + ord("n")])


class GenomeWindows(Dataset):
    """Windows of ``seq_len`` tokens over token arrays (one per record).

    ``random=True``: item ``i`` starts at a position drawn from ``default_rng(seed + i)``,
    chosen record-by-usable-starts; else consecutive non-overlapping windows (at most
    ``num_windows``, evenly spread). Windows holding more than ``max_n_fraction`` of
    ``n_ids`` tokens (unknown bases) are never used. Segments shorter than ``seq_len``
    are dropped; ``ValueError`` when none is left.
    """

    def __init__(
        self, segments: list[np.ndarray], seq_len: int, num_windows: int, random: bool, seed: int = 0,
        n_ids: np.ndarray | None = None, max_n_fraction: float = 1.0,
    ) -> None:
        self.seq_len, self.random, self.seed = seq_len, random, seed
        self.segments, self.usable, counts = [], [], []
        self.too_short = sum(len(s) < seq_len for s in segments)
        self.mostly_n_starts = 0
        for segment in (s for s in segments if len(s) >= seq_len):
            usable = _usable_starts(segment, seq_len, n_ids, max_n_fraction)
            count = len(segment) - seq_len + 1 if usable is None else int(usable.sum())
            self.mostly_n_starts += len(segment) - seq_len + 1 - count
            if count:
                self.segments.append(segment)
                self.usable.append(usable)
                counts.append(count)
        if not self.segments:
            raise ValueError("no window fits" if self.too_short == len(segments) else "every window is mostly N")
        if random:
            self.starts = None
            self.weights = np.array(counts, dtype=np.float64) / sum(counts)
            self.num_windows = num_windows
        else:
            starts = [(j, p) for j, (s, ok) in enumerate(zip(self.segments, self.usable, strict=True))
                      for p in range(0, len(s) - seq_len + 1, seq_len) if ok is None or ok[p]]
            pick = np.linspace(0, len(starts) - 1, min(num_windows, len(starts))).round().astype(int)
            self.starts = [starts[i] for i in pick]
            self.num_windows = len(self.starts)

    def __len__(self) -> int:
        return self.num_windows

    def _draw(self, index: int) -> tuple[int, int]:
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        j = int(rng.choice(len(self.segments), p=self.weights))
        usable, span = self.usable[j], len(self.segments[j]) - self.seq_len + 1
        for _ in range(64):  # rejection: cheap unless the record is mostly N
            start = int(rng.integers(0, span))
            if usable is None or usable[start]:
                return j, start
        return j, int(np.flatnonzero(usable)[rng.integers(0, int(usable.sum()))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        j, start = self._draw(index) if self.random else self.starts[index]
        # "index" lets evaluation draw its MLM masks per window, the same on any batch size or process count.
        return {"input_ids": torch.from_numpy(self.segments[j][start : start + self.seq_len].copy()), "index": index}


def _usable_starts(segment: np.ndarray, seq_len: int, n_ids: np.ndarray | None, max_n_fraction: float):
    """Boolean per window start (None: every start is usable)."""
    if n_ids is None or max_n_fraction >= 1.0:
        return None
    is_n = np.isin(segment, n_ids)
    if not is_n.any():
        return None
    cumulative = np.concatenate([[0], np.cumsum(is_n, dtype=np.int64)])
    return (cumulative[seq_len:] - cumulative[:-seq_len]) <= max_n_fraction * seq_len


class GenomePretrainDataModule(ResumableDataModuleMixin):
    """FASTA/FASTQ windows for masked or causal LM pretraining, with a held-out part.

    ``holdout="tail"``: the last ``holdout_fraction`` of every record (E. coli: of the
    chromosome) is kept out of training. ``holdout="records"``: the last records (in
    file order, ``holdout_fraction`` of all bases) are, which suits many short records
    such as reads. Validation and test read non-overlapping windows from the held-out
    part (the held-out perplexity). Records (or their parts) shorter than ``seq_len``
    give no window and are counted in a warning; windows with more than
    ``max_n_fraction`` unknown bases (N) are skipped. Reverse-complement augmentation
    and masking happen in :class:`omniseq.recipes.genomics.DNAPretrainTask`.

    Args:
        path: a FASTA/FASTQ file (gzip or not), a folder of them, a glob pattern
            (``"genomes/*.fa.gz"``), a list of any of these, a registered name
            (``ecoli_k12``), or None for the built-in synthetic genome (seeded Markov
            chain, ``synthetic_length`` bp).
        seq_len: window length in tokens.
        holdout, holdout_fraction: what is kept for validation (see above).
        max_n_fraction: skip windows with a larger fraction of N (1.0 keeps all).
        train_windows: random windows per training epoch.
        val_windows: most held-out windows evaluated.
        tokenizer_mode, k: tokenizer (``char``, ``kmer``, ``byte``).
        batch_size, num_workers, seed: loader settings.
    """

    test_split = "val"  # the held-out end of the chromosome serves validation and test

    def __init__(
        self,
        path: str | list[str] | None = None,
        seq_len: int = 1024,
        holdout_fraction: float = 0.1,
        holdout: Literal["tail", "records"] = "tail",
        max_n_fraction: float = 0.5,
        train_windows: int = 4096,
        val_windows: int = 256,
        tokenizer_mode: Literal["char", "kmer", "byte"] = "char",
        k: int = 6,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        synthetic_length: int = 200_000,
    ) -> None:
        super().__init__()
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if holdout not in ("tail", "records"):
            raise ValueError(f"holdout must be 'tail' or 'records', got {holdout!r}")
        if not 0.0 <= max_n_fraction <= 1.0:
            raise ValueError(f"max_n_fraction must be in [0, 1], got {max_n_fraction}")
        for name, value in (("seq_len", seq_len), ("train_windows", train_windows), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.save_hyperparameters()
        self.paths = None if path is None else genome_files(path)
        self.tokenizer = NucleotideTokenizer(tokenizer_mode, k=k)
        self.seq_len, self.holdout_fraction, self.holdout = seq_len, holdout_fraction, holdout
        self.max_n_fraction = max_n_fraction
        self.train_windows, self.val_windows = train_windows, val_windows
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.synthetic_length = synthetic_length
        self.datasets: dict[str, GenomeWindows] = {}

    def records(self) -> Iterator[tuple[str, str]]:
        """``(where, sequence)``: ``where`` names the file and the record for error messages."""
        if self.paths is None:
            yield "synthetic", synthetic_genome(self.synthetic_length, seed=self.seed)
            return
        for path in self.paths:
            for record, sequence in iter_sequences(path):
                yield f"{path} record {record!r}", sequence

    def _split(self, encoded: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self.holdout == "tail":
            cuts = [int(round(len(ids) * (1.0 - self.holdout_fraction))) for ids in encoded]
            return [ids[:c] for ids, c in zip(encoded, cuts, strict=True)], [ids[c:] for ids, c in zip(encoded, cuts, strict=True)]
        before = np.cumsum([0] + [len(ids) for ids in encoded])[:-1]
        boundary = (1.0 - self.holdout_fraction) * sum(len(ids) for ids in encoded)
        train = [ids for ids, b in zip(encoded, before, strict=True) if b < boundary]
        return train, encoded[len(train):]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        encoded = [self.tokenizer.encode(sequence, record=where) for where, sequence in self.records()]
        train, held = self._split(encoded)
        self.num_train_tokens = sum(len(s) for s in train)
        self.num_heldout_tokens = sum(len(s) for s in held)
        options = {"n_ids": n_token_ids(self.tokenizer), "max_n_fraction": self.max_n_fraction}
        self.datasets["train"] = self._windows(train, self.train_windows, True, "training part", options)
        self.datasets["val"] = self._windows(held, self.val_windows, False, "held-out part", options)
        self._report(len(encoded))

    def _windows(self, segments: list[np.ndarray], count: int, random: bool, part: str, options: dict) -> GenomeWindows:
        """Windows of the training or held-out part; an error says which part fails and the fix."""
        try:
            return GenomeWindows(segments, self.seq_len, count, random, self.seed, **options)
        except ValueError as err:
            held = part == "held-out part"
            where = "the held-out tail" if held and self.holdout == "tail" else f"the {part}"
            if str(err) != "no window fits":  # every window is mostly N
                fix = f"raise max_n_fraction={self.max_n_fraction} (1.0 keeps every window) or use other records"
                raise ValueError(f"{self._source()}: {err} in {where} ({len(segments)} segment(s)); {fix}") from None
            fraction = f"holdout_fraction={self.holdout_fraction}"
            fix = f"lower seq_len, {'raise' if held else 'lower'} {fraction}, or use longer records"
            longest = max((len(s) for s in segments), default=0)
            raise ValueError(
                f"{self._source()}: {where} is too short for seq_len={self.seq_len}: its longest "
                f"segment has {longest} tokens ({fraction}, holdout={self.holdout!r}); {fix}"
            ) from None

    def _source(self) -> str:
        if self.paths is None:
            return "synthetic genome"
        return str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} files ({self.paths[0]}, ...)"

    def _report(self, num_records: int) -> None:
        train, val = self.datasets["train"], self.datasets["val"]
        if train.too_short or val.too_short:
            rank_zero_warn(
                f"{self._source()}: {train.too_short} of {num_records} record(s) are shorter than seq_len="
                f"{self.seq_len} in the training part and {val.too_short} in the held-out part; they give "
                "no window and are not used (lower seq_len to use them)"
            )
        if train.mostly_n_starts or val.mostly_n_starts:
            rank_zero_info(
                f"{self._source()}: {train.mostly_n_starts} training and {val.mostly_n_starts} held-out window "
                f"start(s) hold more than max_n_fraction={self.max_n_fraction} N and are skipped"
            )


# -- labelled sequences -----------------------------------------------------------


class TokenizedSequences(Dataset):
    """Padded token ids, masks and labels held in memory."""

    def __init__(self, encoded: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "label": self.labels[index]}


_SPLITS = {"train": "train", "val": "dev", "test": "test"}
_FASTA_NAMES = (".fa", ".fasta", ".fna")


def _find_split(data_dir: Path, split: str) -> tuple[Path, Path | None]:
    for suffix in (".csv", ".csv.gz", *_FASTA_NAMES, *(s + ".gz" for s in _FASTA_NAMES)):
        path = data_dir / f"{split}{suffix}"
        if path.is_file():
            labels = data_dir / f"{split}.labels.csv"
            return path, (labels if labels.is_file() and suffix not in (".csv", ".csv.gz") else None)
    raise FileNotFoundError(f"{data_dir}: no {split}.csv[.gz] or {split}.fa[sta][.gz] found")


class SequenceClassificationDataModule(ResumableDataModuleMixin):
    """Labelled DNA sequences: a GUE task, a folder of files, or a built-in synthetic task.

    Splits are read as given: ``train``, ``dev`` (validation) and ``test``. A folder holds
    ``<split>.csv[.gz]`` (``sequence,label``) or ``<split>.fa[sta][.gz]`` with labels in
    ``<split>.labels.csv`` (``id,label``) or in the headers (``label=1``).

    Over-long sequences: ``max_length`` defaults to the longest training sequence;
    longer validation/test sequences are refused (``overflow="error"``) or cut to
    their first ``max_length`` tokens (``"truncate"``). To classify long sequences by
    tiles use :meth:`omniseq.api.dna_encoder.DNAEncoder.predict`.

    Args:
        task: GUE task (``prom_core_all``, ``tf0``, ...), or None.
        data_dir: folder with the three splits. Giving both ``task`` and ``data_dir`` is an error.
        default_task: GUE task read when neither ``task`` nor ``data_dir`` is given (the
            GUE recipes set it, so ``--data.data_dir`` alone selects the folder).
        max_length, overflow: length policy (see above).
        max_train_samples: keep a seeded random subset of the training split (budget runs).
        tokenizer_mode, k: tokenizer.
        batch_size, num_workers, seed: loader settings.
        synthetic: options of ``synthetic_labeled`` (``n``, ``length``, ``motif``) when
            ``task``, ``data_dir`` and ``default_task`` are all None.
    """

    def __init__(
        self,
        task: str | None = None,
        data_dir: str | None = None,
        default_task: str | None = None,
        max_length: int | None = None,
        overflow: Literal["error", "truncate"] = "error",
        max_train_samples: int | None = None,
        tokenizer_mode: Literal["char", "kmer", "byte"] = "char",
        k: int = 6,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        synthetic: dict | None = None,
    ) -> None:
        super().__init__()
        if overflow not in ("error", "truncate"):
            raise ValueError(f"overflow must be 'error' or 'truncate' for classification data, got {overflow!r}")
        if task is not None and data_dir is not None:
            raise ValueError(
                f"both a GUE task ({task!r}) and a data folder ({data_dir!r}) were given; pass one: "
                "--data.data_dir alone reads the folder, --data.task alone the GUE task"
            )
        if data_dir is not None and not Path(data_dir).is_dir():
            raise FileNotFoundError(f"data_dir {data_dir!r} is not a folder (expected train/dev/test files in it)")
        self.save_hyperparameters()
        task = task if task is not None or data_dir is not None else default_task
        if task is not None:
            gue_dataset_name(task, "train")  # an unknown task fails here, listing the known ones
        self.task, self.data_dir = task, None if data_dir is None else Path(data_dir)
        self.max_length, self.overflow = max_length, overflow
        self.max_train_samples = max_train_samples
        self.tokenizer_mode, self.k = tokenizer_mode, k
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.synthetic = synthetic or {}
        self.datasets: dict[str, TokenizedSequences] = {}
        self.tokenizer: NucleotideTokenizer | None = None
        self.num_classes: int | None = None

    def _read_split(self, stage: str) -> tuple[list[str], list[int], list[str]]:
        split = _SPLITS[stage]
        if self.task is not None:
            return read_labeled(resolve_dataset(gue_dataset_name(self.task, split)))
        if self.data_dir is not None:
            path, labels = _find_split(self.data_dir, split)
            seqs, targets, records = read_labeled(path, labels)
            if not path.name.endswith((".csv", ".csv.gz")):
                records = [f"{path.name} record {r!r}" for r in records]  # FASTA ids: say which file
            return seqs, targets, records
        options = {"n": 2000 if stage == "train" else 400, **self.synthetic}
        offset = {"train": 0, "val": 1, "test": 2}[stage]
        seqs, labels = synthetic_labeled(seed=self.seed * 3 + offset, **options)
        return seqs, labels, [f"synthetic {stage} {i}" for i in range(len(seqs))]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        raw = {name: self._read_split(name) for name in ("train", "val", "test")}
        seqs, labels, records = raw["train"]
        if self.max_train_samples is not None and self.max_train_samples < len(seqs):
            keep = np.sort(np.random.default_rng(self.seed).permutation(len(seqs))[: self.max_train_samples])
            seqs, labels, records = ([x[i] for i in keep] for x in (seqs, labels, records))
            raw["train"] = (seqs, labels, records)
        probe = NucleotideTokenizer(self.tokenizer_mode, k=self.k)
        longest = max(len(probe.encode(s, r)) for s, r in zip(seqs, records, strict=True))
        max_length = self.max_length or longest
        self.tokenizer = NucleotideTokenizer(self.tokenizer_mode, k=self.k, max_length=max_length,
                                             overflow=self.overflow)
        self.num_classes = max(labels) + 1
        if self.num_classes < 2:
            raise ValueError(f"training labels hold a single class ({labels[0]}); a classifier needs at least 2")
        for name, (s, y, r) in raw.items():
            unknown = sorted(set(y) - set(labels))
            if unknown:
                raise ValueError(f"{name} split has label(s) {unknown} that never occur in the training split")
            encoded = self.tokenizer.batch_encode(s, r, pad_to=max_length)
            self.datasets[name] = TokenizedSequences(encoded, torch.tensor(y, dtype=torch.long))

