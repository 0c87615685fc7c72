"""Per-base genome annotation labels from a GFF3 file, for token-classification fine-tuning.

Every base of every record gets one class (:data:`ANNOTATION_CLASSES`):

- ``cds_plus`` / ``cds_minus``: inside a CDS feature on the + / - strand;
- ``noncoding_gene``: inside a ``gene`` or ``pseudogene`` feature but in no CDS
  (RNA genes, pseudogenes), either strand;
- ``intergenic``: everything else.

CDS beats gene; where CDSs on both strands overlap (rare in bacteria), the - strand
wins. Splits are contiguous blocks of each record, so no evaluation window shares a
base with a training window: the last ``test_fraction`` is the test block, the
``val_fraction`` before it the validation block, the rest trains. The held-out blocks
are tiled completely (the last window is shifted back to end at the block's end and
its overlapping bases are not scored twice), so the metrics count every held-out base once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from omniseq.data.genomics import genome_files  # also registers ecoli_k12 and ecoli_k12_gff
from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import resolve_dataset
from omniseq.domains.genomics import NucleotideTokenizer, iter_sequences, read_gff

__all__ = ["ANNOTATION_CLASSES", "GenomeAnnotationDataModule", "annotation_labels"]

ANNOTATION_CLASSES = ("intergenic", "cds_plus", "cds_minus", "noncoding_gene")
IGNORE_INDEX = -100
# Reverse-complementing a window swaps the strand of every CDS label.
_STRAND_SWAP = np.array([0, 2, 1, 3], dtype=np.int64)
_GENE_TYPES = ("gene", "pseudogene")


def _feature_name(row: pd.Series) -> str:
    for field in str(row["attributes"]).split(";"):
        if field.startswith(("ID=", "Name=")):
            return field.split("=", 1)[1]
    return f"{row['type']} {row['start']}..{row['end']}"


def annotation_labels(features: pd.DataFrame, lengths: dict[str, int], gff: str | Path) -> dict[str, np.ndarray]:
    """Per-base class indices (int64) for every record in ``lengths`` (record id -> length).

    ``features`` is :func:`omniseq.domains.genomics.read_gff`'s table of ``gff``; features on
    a record the genome does not have, past its end, or a CDS without a strand are errors.
    """
    used = features[features["type"].isin(("CDS", *_GENE_TYPES))]
    unknown = sorted(set(used["seqid"]) - set(lengths))
    if unknown:
        raise ValueError(f"{gff}: features on sequence(s) {unknown[:5]} that the genome does not hold "
                         f"(its records: {sorted(lengths)[:5]}); use the GFF of this assembly")
    labels = {seqid: np.zeros(length, dtype=np.int64) for seqid, length in lengths.items()}
    bad = used[(used["start"] < 1) | (used["end"] < used["start"])
               | (used["end"] > used["seqid"].map(lengths).astype(np.int64))]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(f"{gff}: feature {_feature_name(row)!r} spans {row['start']}..{row['end']}, outside "
                         f"1..{lengths[row['seqid']]} of {row['seqid']!r}; is it the GFF of this assembly?")
    cds = used[used["type"] == "CDS"]
    stranded = cds[~cds["strand"].isin(("+", "-"))]
    if len(stranded):
        row = stranded.iloc[0]
        raise ValueError(f"{gff}: CDS {_feature_name(row)!r} has strand {row['strand']!r}; a CDS needs + or -")
    # Paint in order of precedence: genes, then + CDS, then - CDS (1-based inclusive -> 0-based slices).
    layers = ((used["type"].isin(_GENE_TYPES), 3), ((used["type"] == "CDS") & (used["strand"] == "+"), 1),
              ((used["type"] == "CDS") & (used["strand"] == "-"), 2))
    for selection, label in layers:
        for seqid, start, end in used.loc[selection, ["seqid", "start", "end"]].itertuples(index=False):
            labels[seqid][start - 1 : end] = label
    return labels


class AnnotatedWindows(Dataset):
    """``seq_len`` windows of token ids with per-base labels over one or more blocks.

    ``random=True``: ``num_windows`` windows at positions drawn from
    ``default_rng(seed, index)``, reverse-complemented (labels flipped and strand-swapped)
    with probability 1/2 when ``rc_complement`` is given. Else the blocks are tiled
    completely (see the module docstring).
    """

    def __init__(
        self, blocks: list[tuple[np.ndarray, np.ndarray]], seq_len: int, num_windows: int, random: bool,
        seed: int = 0, rc_complement: np.ndarray | None = None,
    ) -> None:
        self.blocks, self.seq_len, self.random, self.seed = blocks, seq_len, random, seed
        self.rc_complement = rc_complement
        spans = np.array([len(ids) - seq_len + 1 for ids, _ in blocks], dtype=np.float64)
        if random:
            self.weights = spans / spans.sum()
            self.num_windows = num_windows
            return
        # (block, start, first scored position in the window)
        self.tiles = []
        for j, (ids, _) in enumerate(blocks):
            starts = list(range(0, len(ids) - seq_len + 1, seq_len))
            self.tiles += [(j, s, 0) for s in starts]
            if starts[-1] + seq_len < len(ids):
                last = len(ids) - seq_len
                self.tiles.append((j, last, starts[-1] + seq_len - last))
        self.num_windows = len(self.tiles)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        if self.random:
            rng = np.random.default_rng((self.seed, index))
            j = int(rng.choice(len(self.blocks), p=self.weights))
            start = int(rng.integers(0, len(self.blocks[j][0]) - self.seq_len + 1))
            scored_from, flip = 0, self.rc_complement is not None and rng.random() < 0.5
        else:
            (j, start, scored_from), flip = self.tiles[index], False
        ids = self.blocks[j][0][start : start + self.seq_len].copy()
        labels = self.blocks[j][1][start : start + self.seq_len].copy()
        labels[:scored_from] = IGNORE_INDEX
        if flip:
            ids, labels = self.rc_complement[ids][::-1].copy(), _STRAND_SWAP[labels][::-1].copy()
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}


class GenomeAnnotationDataModule(ResumableDataModuleMixin):
    """Windows of a genome with per-base gene / CDS / intergenic labels from its GFF3.

    Args:
        genome: FASTA file(s) as :func:`omniseq.data.genomics.genome_files` takes them (a file,
            folder, glob or list) or a registered name (``ecoli_k12``).
        annotation: GFF3 file or registered name (``ecoli_k12_gff``) on the same assembly.
        seq_len: window length in bases (character tokens).
        val_fraction, test_fraction: the contiguous held-out blocks at the end of every record.
        train_windows: random training windows per epoch.
        rc_augment: reverse-complement half of the training windows (labels strand-swapped).
        batch_size, num_workers, seed: loader settings.
    """

    def __init__(
        self,
        genome: str | list[str] = "ecoli_k12",
        annotation: str = "ecoli_k12_gff",
        seq_len: int = 512,
        val_fraction: float = 0.05,
        test_fraction: float = 0.1,
        train_windows: int = 4096,
        rc_augment: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not (0.0 < val_fraction and 0.0 < test_fraction and val_fraction + test_fraction < 1.0):
            raise ValueError(f"val_fraction and test_fraction must be positive with a sum below 1, "
                             f"got {val_fraction} and {test_fraction}")
        if seq_len <= 0 or train_windows <= 0 or batch_size <= 0:
            raise ValueError("seq_len, train_windows and batch_size must be positive")
        self.save_hyperparameters()
        self.genome_files, self.annotation = genome_files(genome), resolve_dataset(annotation)
        self.seq_len, self.train_windows, self.rc_augment = seq_len, train_windows, rc_augment
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.tokenizer = NucleotideTokenizer("char")
        self.class_names = ANNOTATION_CLASSES
        self.num_classes = len(ANNOTATION_CLASSES)
        self.datasets: dict[str, AnnotatedWindows] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        records = {}
        for path in self.genome_files:
            for record, seq in iter_sequences(path):
                if record in records:
                    raise ValueError(f"{path}: record {record!r} occurs twice in the genome; GFF features "
                                     "are placed by record id, so ids must be unique")
                records[record] = self.tokenizer.encode(seq, f"{path} record {record!r}")
        labels = annotation_labels(read_gff(self.annotation), {r: len(ids) for r, ids in records.items()},
                                   self.annotation)
        blocks: dict[str, list] = {"train": [], "val": [], "test": []}
        self.regions: dict[str, list[tuple[str, int, int]]] = {"train": [], "val": [], "test": []}
        for record, ids in records.items():
            n = len(ids)
            cuts = {"train": (0, round(n * (1 - self.val_fraction - self.test_fraction))),
                    "val": (round(n * (1 - self.val_fraction - self.test_fraction)), round(n * (1 - self.test_fraction))),
                    "test": (round(n * (1 - self.test_fraction)), n)}
            for split, (start, end) in cuts.items():
                if end - start >= self.seq_len:
                    blocks[split].append((ids[start:end], labels[record][start:end]))
                    self.regions[split].append((record, start, end))
        for split, parts in blocks.items():
            if not parts:
                raise ValueError(
                    f"{self.genome_files[0]}: no record has a {split} block of at least seq_len={self.seq_len} bases "
                    f"(val_fraction={self.val_fraction}, test_fraction={self.test_fraction}); lower seq_len "
                    "or raise the fractions"
                )
        complement = self.tokenizer.complement_ids.numpy() if self.rc_augment else None
        self.datasets["train"] = AnnotatedWindows(blocks["train"], self.seq_len, self.train_windows, True,
                                                  self.seed, complement)
        for split in ("val", "test"):
            self.datasets[split] = AnnotatedWindows(blocks[split], self.seq_len, 0, False)
