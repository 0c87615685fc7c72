"""Reading FASTA, FASTQ (Biopython), GFF3 and labelled sequence files; gzip is detected
from the file's magic bytes, so ``.gz`` or not makes no difference.

Files are decoded byte for byte (Latin-1), so a stray non-ASCII byte reaches the
tokenizer unchanged and its error names the record, the position and the byte
(Biopython's ``Seq`` would refuse it with an unrelated parser message).
Every reader refuses empty files with a message naming the file.
"""

from __future__ import annotations

import gzip
import io
import itertools
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from Bio.SeqIO.FastaIO import SimpleFastaParser
from Bio.SeqIO.QualityIO import FastqGeneralIterator

__all__ = [
    "iter_fasta", "iter_fastq", "iter_sequences", "open_text", "read_fasta", "read_fastq", "read_gff",
    "read_labeled", "sequence_format",
]

GFF_COLUMNS = ("seqid", "source", "type", "start", "end", "score", "strand", "phase", "attributes")
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas")
FASTQ_SUFFIXES = (".fq", ".fastq")
_FASTA_KIND = "FASTA: each record starts with a '>id' line"


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently decompressing gzip."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(2)
    # Latin-1 maps every byte to one character: positions stay byte positions and
    # a non-ASCII byte is reported by the tokenizer, not lost to a replacement character.
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="latin-1")
    return open(path, encoding="latin-1")


@contextmanager
def readable(path: str | Path, kind: str) -> Iterator[None]:
    """Turn a decompression or parser failure into a ValueError naming the file and the format.

    A gzip file cut short (an interrupted download) raises EOFError deep inside
    gzip; Biopython refuses text before the first ``>`` with a page of advice.
    """
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(
            f"{path}: truncated or corrupt gzip data ({err}); re-download the file or re-compress it"
        ) from err
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise  # already names the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not valid {kind} ({first})") from err


def _first_line(handle: io.TextIOBase) -> str:
    """The first non-blank line (kept for the parser by the caller)."""
    for line in handle:
        if line.strip():
            return line
    return ""


def iter_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(record id, sequence)`` pairs; raises on an empty file, an empty record, text before
    the first ``>`` header, or truncated gzip data."""
    count = 0
    with open_text(path) as handle, readable(path, _FASTA_KIND):
        first = _first_line(handle)
        if first and not first.startswith(">"):
            raise ValueError(f"{path}: not valid {_FASTA_KIND} (the file starts with {first.strip()[:40]!r})")
        lines = itertools.chain([first], handle) if first else iter(())
        for title, sequence in SimpleFastaParser(lines):
            count += 1
            record = title.split(None, 1)[0] if title.strip() else f"#{count}"
            if not sequence:
                raise ValueError(f"{path}: record {record!r} has an empty sequence")
            yield record, sequence
    if count == 0:
        raise ValueError(f"{path}: no FASTA records (empty file or not FASTA: records start with '>')")


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    return list(iter_fasta(path))


def iter_fastq(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """``(record id, sequence, quality string)`` triples, streamed."""
    count = 0
    with open_text(path) as handle, readable(path, "FASTQ: four lines per read, starting with '@id'"):
        for title, sequence, quality in FastqGeneralIterator(handle):
            count += 1
            record = title.split(None, 1)[0] if title.strip() else f"#{count}"
            if not sequence:
                raise ValueError(f"{path}: read {record!r} has an empty sequence")
            yield record, sequence, quality
    if count == 0:
        raise ValueError(f"{path}: no FASTQ records (empty file?)")


def read_fastq(path: str | Path) -> list[tuple[str, str, list[int]]]:
    """``(record id, sequence, phred qualities)`` triples (Sanger offset 33)."""
    return [(r, s, [ord(c) - 33 for c in q]) for r, s, q in iter_fastq(path)]


def sequence_format(path: str | Path) -> str:
    """``"fasta"`` or ``"fastq"``: by suffix (``.fq``/``.fastq`` [.gz]), else by the first character."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(FASTQ_SUFFIXES):
        return "fastq"
    if name.endswith(FASTA_SUFFIXES):
        return "fasta"
    with open_text(path) as handle, readable(path, "FASTA or FASTQ"):
        first = _first_line(handle)
    return "fastq" if first.startswith("@") else "fasta"


def iter_sequences(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(record id, sequence)`` pairs of a FASTA or FASTQ file (see :func:`sequence_format`)."""
    if sequence_format(path) == "fastq":
        return ((record, sequence) for record, sequence, _ in iter_fastq(path))
    return iter_fasta(path)


def read_gff(path: str | Path) -> pd.DataFrame:
    """GFF3 features as a table with the nine standard columns (start/end 1-based, inclusive).

    Biopython's core has no GFF parser, so the nine tab-separated columns are read
    here; comment lines and the ``##FASTA`` section are skipped.
    """
    rows = []
    with open_text(path) as handle, readable(path, "GFF3"):
        for number, line in enumerate(handle, start=1):
            if line.startswith("##FASTA"):
                break
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 9:
                raise ValueError(f"{path}: line {number} has {len(fields)} tab-separated columns, GFF needs 9")
            rows.append(fields)
    if not rows:
        raise ValueError(f"{path}: no GFF features (empty file?)")
    frame = pd.DataFrame(rows, columns=list(GFF_COLUMNS))
    frame["start"] = frame["start"].astype(int)
    frame["end"] = frame["end"].astype(int)
    return frame


def _is_fasta(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(FASTA_SUFFIXES)


def read_labeled(path: str | Path, labels_path: str | Path | None = None) -> tuple[list[str], list[int], list[str]]:
    """Sequences, integer labels and record names from a CSV or a FASTA file.

    CSV (optionally gzip): columns ``sequence`` and ``label`` (GUE layout); an empty
    sequence cell is an error naming the row.
    FASTA: labels from ``labels_path`` (CSV with ``id,label``; record ids must be
    unique, every record needs exactly one label and every label a record) or,
    without it, from a ``label=<int>`` token in each header line's description.
    """
    path = Path(path)
    if not _is_fasta(path):
        if labels_path is not None:
            raise ValueError(f"{path}: labels_path is only used with FASTA input")
        return _read_labeled_csv(path)
    if labels_path is None:
        return _fasta_header_labels(path)
    pairs = read_fasta(path)
    ids = [rid for rid, _ in pairs]
    _refuse_duplicate_ids(ids, path, labels_path)
    with open_text(labels_path) as handle:
        table = pd.read_csv(handle, dtype={"id": str})
    if {"id", "label"} - set(table.columns):
        raise ValueError(f"{labels_path}: expected columns 'id,label', got {list(table.columns)}")
    if table["id"].duplicated().any():
        raise ValueError(f"{labels_path}: duplicate ids {table['id'][table['id'].duplicated()].tolist()[:5]}")
    mapping = dict(zip(table["id"], _int_labels(table["label"], Path(labels_path)), strict=True))
    unlabeled = [rid for rid in ids if rid not in mapping]
    orphan = sorted(set(mapping) - set(ids))
    if unlabeled or orphan:
        raise ValueError(
            f"labels {labels_path} do not match {path}: {len(unlabeled)} record(s) without a label "
            f"{unlabeled[:5]}, {len(orphan)} label(s) without a record {orphan[:5]}"
        )
    return [seq for _, seq in pairs], [mapping[rid] for rid in ids], ids


def _refuse_duplicate_ids(ids: list[str], path: Path, labels_path: str | Path) -> None:
    """Labels are looked up by id, so two records with one id would silently share a label."""
    seen: dict[str, int] = {}
    for index, rid in enumerate(ids):
        if rid in seen:
            raise ValueError(
                f"{path}: record id {rid!r} occurs more than once (records {seen[rid]} and {index}, 0-based), "
                f"so {labels_path} cannot tell them apart; give every record a unique id (the first word "
                "after '>')"
            )
        seen[rid] = index


def _read_labeled_csv(path: Path) -> tuple[list[str], list[int], list[str]]:
    with open_text(path) as handle, readable(path, "CSV (sequence,label)"):
        try:
            # keep_default_na=False: an empty cell stays "" (found below), and a sequence
            # "NA" or "NAN" (all-N bases) is not read as a missing value.
            frame = pd.read_csv(handle, dtype={"sequence": str}, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path}: empty file; expected a CSV with columns 'sequence,label'") from None
    missing = {"sequence", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected 'sequence,label', got {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    sequences = frame["sequence"].str.strip()
    empty = (sequences == "").to_numpy().nonzero()[0]
    if empty.size:
        row = int(empty[0])
        raise ValueError(
            f"{path}: row {row} (line {row + 2} of the file) has an empty sequence cell "
            f"({empty.size} such row(s)); fill in the sequence or drop the row"
        )
    labels = _int_labels(frame["label"], path)
    records = [f"{path.name} row {i}" for i in range(len(frame))]
    return sequences.tolist(), labels, records


def _fasta_header_labels(path: Path) -> tuple[list[str], list[int], list[str]]:
    sequences, labels, ids = [], [], []
    with open_text(path) as handle, readable(path, _FASTA_KIND):
        for title, sequence in SimpleFastaParser(handle):
            record, _, description = title.partition(" ")
            found = [t.split("=", 1)[1] for t in description.split() if t.startswith("label=")]
            if len(found) != 1 or not found[0].lstrip("-").isdigit():
                raise ValueError(
                    f"{path}: record {record!r} has no 'label=<int>' in its header; "
                    "add one or pass labels_path (CSV id,label)"
                )
            if not sequence:
                raise ValueError(f"{path}: record {record!r} has an empty sequence")
            sequences.append(sequence)
            labels.append(int(found[0]))
            ids.append(record)
    if not sequences:
        raise ValueError(f"{path}: no FASTA records (empty file?)")
    return sequences, labels, ids


def _int_labels(column: pd.Series, path: Path) -> list[int]:
    numeric = pd.to_numeric(column, errors="coerce")
    bad = numeric.isna() | (numeric != numeric.round())
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: label {column.iloc[row]!r} at row {row} is not an integer class")
    if (numeric < 0).any():
        raise ValueError(f"{path}: labels must be non-negative class indices")
    return numeric.astype(int).tolist()
