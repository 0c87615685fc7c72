"""Genomics adapters: nucleotide tokenizer, reverse complement, sequence file readers."""

from omniseq.domains.genomics.io import (
    iter_fasta,
    iter_fastq,
    iter_sequences,
    open_text,
    read_fasta,
    read_fastq,
    read_gff,
    read_labeled,
    sequence_format,
)
from omniseq.domains.genomics.tokenizer import (
    SPECIAL_TOKENS,
    NucleotideTokenizer,
    mask_tokens,
    reverse_complement,
    reverse_complement_ids,
)

__all__ = [
    "SPECIAL_TOKENS",
    "NucleotideTokenizer",
    "iter_fasta",
    "iter_fastq",
    "iter_sequences",
    "mask_tokens",
    "open_text",
    "read_fasta",
    "read_fastq",
    "read_gff",
    "read_labeled",
    "reverse_complement",
    "reverse_complement_ids",
    "sequence_format",
]
