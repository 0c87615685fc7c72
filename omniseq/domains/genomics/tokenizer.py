"""Nucleotide tokenizer: characters, k-mers or bytes, with reverse complement.

Character vocabulary: ``[PAD] [MASK] [CLS] [SEP] [UNK] A C G T N`` (ids 0..9).
Lowercase (soft-masked) bases stay bases and can be reported in a mask channel;
IUPAC ambiguity codes (R Y S W K M B D H V) become N; U (RNA) reads as T, on
purpose, so RNA sequences can be fed as they are (the invalid-character error
lists it); anything else is an error naming the record, the position and the
character (a non-ASCII one by its byte value or code point).

Over-long sequences follow ``overflow`` (see :meth:`NucleotideTokenizer.fit_length`):
``"error"`` refuses them, ``"truncate"`` keeps the first ``max_length`` tokens,
``"tile"`` cuts them into consecutive non-overlapping windows (the last one padded).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

__all__ = [
    "SPECIAL_TOKENS",
    "NucleotideTokenizer",
    "mask_tokens",
    "reverse_complement",
    "reverse_complement_ids",
]

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]")
PAD_ID, MASK_ID, CLS_ID, SEP_ID, UNK_ID = range(5)
BASES = "ACGTN"
IUPAC_AMBIGUITY = "RYSWKMBDHV"
_COMPLEMENT = str.maketrans(
    "ACGTNRYSWKMBDHVUacgtnryswkmbdhvu", "TGCANYRSWMKVHDBAtgcanyrswmkvhdba"
)
_INVALID = 255  # sentinel in the character lookup table

Mode = Literal["char", "kmer", "byte"]
Overflow = Literal["error", "truncate", "tile"]


def reverse_complement(sequence: str) -> str:
    """Reverse complement of a DNA string; IUPAC codes and case are kept (R<->Y, K<->M, ...)."""
    return sequence.translate(_COMPLEMENT)[::-1]


def reverse_complement_ids(ids: torch.Tensor, complement: torch.Tensor) -> torch.Tensor:
    """Reverse complement of token ids ``(..., L)`` given the vocabulary permutation ``complement``."""
    return complement.to(ids.device)[ids].flip(-1)


def _char_table() -> np.ndarray:
    """byte -> index into ``BASES`` (A C G T N) or ``_INVALID``."""
    table = np.full(256, _INVALID, dtype=np.uint8)
    for i, base in enumerate(BASES):
        table[ord(base)] = table[ord(base.lower())] = i
    for code in IUPAC_AMBIGUITY:
        table[ord(code)] = table[ord(code.lower())] = BASES.index("N")
    table[ord("U")] = table[ord("u")] = BASES.index("T")
    return table


_CHAR_TABLE = _char_table()


def _describe_non_ascii(char: str) -> str:
    # Files are decoded as Latin-1 (one character per byte), so a code point under 256 is the byte.
    if ord(char) < 256:
        return f"non-ASCII byte 0x{ord(char):02X}"
    return f"non-ASCII character {char!r} (U+{ord(char):04X})"


class NucleotideTokenizer:
    """Character, k-mer or byte tokenizer for DNA.

    Args:
        mode: ``"char"`` (one token per base, vocabulary of 10), ``"kmer"`` (one
            token per k-mer of A/C/G/T; k-mers with N map to ``[UNK]``) or
            ``"byte"`` (one token per raw byte, no validation; vocabulary 5 + 256).
        k: k-mer size for ``mode="kmer"``.
        kmer_stride: step between k-mers (``k``: non-overlapping, 1: overlapping as DNABERT).
        max_length: longest token sequence a model accepts (None: unlimited).
        overflow: what :meth:`fit_length` does with longer ones: ``error``, ``truncate`` or ``tile``.
    """

    def __init__(
        self,
        mode: Mode = "char",
        k: int = 6,
        kmer_stride: int | None = None,
        max_length: int | None = None,
        overflow: Overflow = "error",
    ) -> None:
        if mode not in ("char", "kmer", "byte"):
            raise ValueError(f"mode must be 'char', 'kmer' or 'byte', got {mode!r}")
        if overflow not in ("error", "truncate", "tile"):
            raise ValueError(f"overflow must be 'error', 'truncate' or 'tile', got {overflow!r}")
        if mode == "kmer" and not 1 <= k <= 8:
            raise ValueError(f"k must be in 1..8, got {k}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.mode, self.k = mode, k
        self.kmer_stride = kmer_stride or k
        self.max_length, self.overflow = max_length, overflow
        n = len(SPECIAL_TOKENS)
        if mode == "char":
            self.tokens = list(SPECIAL_TOKENS) + list(BASES)
        elif mode == "kmer":
            self.tokens = list(SPECIAL_TOKENS) + ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        else:
            self.tokens = list(SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)]
        self.num_special = n
        self.complement_ids = self._complement_table()

    # -- vocabulary -------------------------------------------------------

    pad_id, mask_id, cls_id, sep_id, unk_id = PAD_ID, MASK_ID, CLS_ID, SEP_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def base_ids(self) -> torch.Tensor:
        """Ids of the ordinary tokens that random MLM replacement draws from."""
        if self.mode == "char":
            return torch.arange(self.num_special, self.num_special + 4)  # A C G T
        if self.mode == "byte":
            return torch.tensor([self.num_special + ord(c) for c in "ACGT"])
        return torch.arange(self.num_special, self.vocab_size)

    def _complement_table(self) -> torch.Tensor:
        """Permutation of the vocabulary mapping each token to its reverse complement."""
        table = torch.arange(len(self.tokens))
        n = self.num_special
        if self.mode == "char":
            for i, base in enumerate(BASES):
                table[n + i] = n + BASES.index(reverse_complement(base))
        elif self.mode == "kmer":
            index = {kmer: n + i for i, kmer in enumerate(self.tokens[n:])}
            for kmer, i in index.items():
                table[i] = index[reverse_complement(kmer)]
        else:
            for b in range(256):
                table[n + b] = n + ord(chr(b).translate(_COMPLEMENT)) if b < 128 else n + b
        return table

    def config(self) -> dict:
        return {"mode": self.mode, "k": self.k, "kmer_stride": self.kmer_stride,
                "max_length": self.max_length, "overflow": self.overflow}

    # -- encoding -----------------------------------------------------------

    def clean(self, sequence: str, record: str = "<sequence>") -> tuple[np.ndarray, np.ndarray]:
        """Base indices into ``A C G T N`` and the soft-mask flags (lowercase), validated.

        Raises ValueError naming ``record`` and the 0-based position of the first invalid character.
        """
        if not sequence.isascii():
            non_ascii = next(i for i, char in enumerate(sequence) if ord(char) > 127)
            raise ValueError(f"{record}: {_describe_non_ascii(sequence[non_ascii])} at position {non_ascii} "
                             "(0-based); a DNA sequence holds only ASCII letters (was the file saved from a "
                             "word processor, or a non-DNA column read as the sequence?)")
        raw = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
        index = _CHAR_TABLE[raw]
        bad = np.flatnonzero(index == _INVALID)
        if bad.size:
            pos = int(bad[0])
            raise ValueError(
                f"{record}: invalid character {sequence[pos]!r} at position {pos} (0-based); "
                f"expected A C G T N, IUPAC codes {' '.join(IUPAC_AMBIGUITY)}, U (read as T) or their lowercase"
            )
        soft = (raw >= ord("a")) & (raw <= ord("z"))
        return index.astype(np.int64), soft

    def encode(
        self, sequence: str, record: str = "<sequence>", return_soft_mask: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Token ids ``(L,)`` int64 of one sequence (and the soft-mask channel on request).

        The soft mask has one flag per token (for k-mers: whether any base of it is lowercase).
        """
        if self.mode == "byte":
            try:
                raw = np.frombuffer(sequence.encode("latin-1"), dtype=np.uint8)
            except UnicodeEncodeError as err:
                raise ValueError(f"{record}: {_describe_non_ascii(sequence[err.start])} at position {err.start} "
                                 "(0-based) is not a single byte; byte mode reads bytes 0..255") from None
            ids = raw.astype(np.int64) + self.num_special
            soft = (raw >= ord("a")) & (raw <= ord("z"))
            return (ids, soft) if return_soft_mask else ids
        index, soft = self.clean(sequence, record)
        if self.mode == "char":
            ids = index + self.num_special
        else:
            ids, soft = self._kmers(index, soft)
        return (ids, soft) if return_soft_mask else ids

    def _kmers(self, index: np.ndarray, soft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k, stride = self.k, self.kmer_stride
        if len(index) < k:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        starts = np.arange(0, len(index) - k + 1, stride)
        windows = index[starts[:, None] + np.arange(k)]  # (T, k)
        has_n = (windows == BASES.index("N")).any(1)
        code = (windows.clip(max=3) * (4 ** np.arange(k - 1, -1, -1))).sum(1)
        ids = np.where(has_n, UNK_ID, code + self.num_special)
        soft_any = soft[starts[:, None] + np.arange(k)].any(1)
        return ids.astype(np.int64), soft_any

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor, skip_special: bool = True) -> str:
        """Ids back to a string (k-mers are concatenated, so overlapping k-mers repeat bases)."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i < self.num_special:
                if not skip_special:
                    out.append(SPECIAL_TOKENS[i])
                continue
            out.append(chr(i - self.num_special) if self.mode == "byte" else self.tokens[i])
        return "".join(out)

    # -- length policy and batching ------------------------------------------

    def fit_length(self, ids: np.ndarray, record: str = "<sequence>") -> list[np.ndarray]:
        """Apply the overflow policy: a list of one or more id arrays no longer than ``max_length``."""
        limit = self.max_length
        if limit is None or len(ids) <= limit:
            return [ids]
        if self.overflow == "error":
            raise ValueError(
                f"{record}: {len(ids)} tokens exceed the model's max_length={limit}; "
                "use overflow='truncate' or 'tile', or raise max_length"
            )
        if self.overflow == "truncate":
            return [ids[:limit]]
        return [ids[i : i + limit] for i in range(0, len(ids), limit)]

    def batch_encode(
        self,
        sequences: Sequence[str],
        records: Sequence[str] | None = None,
        pad_to: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode, apply the overflow policy, right-pad with ``[PAD]``.

        Returns ``input_ids (N, L)``, ``attention_mask (N, L)`` bool, ``soft_mask (N, L)`` bool
        and ``source (N,)``: which input sequence each row came from (tiling makes several rows).
        """
        if len(sequences) == 0:
            raise ValueError("batch_encode: no sequences given")
        records = records or [f"sequence {i}" for i in range(len(sequences))]
        rows, softs, source = [], [], []
        for i, (seq, rec) in enumerate(zip(sequences, records, strict=True)):
            ids, soft = self.encode(seq, rec, return_soft_mask=True)
            if len(ids) == 0:
                raise ValueError(f"{rec}: empty sequence (no tokens)")
            pieces = self.fit_length(ids, rec)
            offset = 0
            for piece in pieces:
                rows.append(piece)
                softs.append(soft[offset : offset + len(piece)])
                source.append(i)
                offset += len(piece)
        length = max(len(r) for r in rows) if pad_to is None else pad_to
        if any(len(r) > length for r in rows):
            raise ValueError(f"batch_encode: pad_to={pad_to} is shorter than the longest row")
        input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        soft_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for j, (r, s) in enumerate(zip(rows, softs, strict=True)):
            input_ids[j, : len(r)] = torch.from_numpy(r)
            soft_mask[j, : len(s)] = torch.from_numpy(s)
        return {"input_ids": input_ids, "attention_mask": input_ids != PAD_ID,
                "soft_mask": soft_mask, "source": torch.tensor(source)}


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    random_ids: torch.Tensor,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019): pick ``mask_prob`` of the maskable positions;
    of those 80% become ``[MASK]``, 10% a random token from ``random_ids``, 10% stay.

    Returns ``(inputs, labels)``; ``labels`` is -100 at unpicked positions.
    """
    if ids.shape != maskable.shape:
        raise ValueError(f"mask_tokens: maskable must have the shape of ids {tuple(ids.shape)}, got {tuple(maskable.shape)}")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    picked = (draw < mask_prob) & maskable
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    to_mask = picked & (action < 0.8)
    to_random = picked & (action >= 0.8) & (action < 0.9)
    choice = torch.randint(len(random_ids), ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids.to(ids.device)[choice], inputs)
    return inputs, labels
