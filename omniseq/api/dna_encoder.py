"""DNAEncoder: embed DNA sequences (or a FASTA/FASTQ file), classify them, save and load.

    enc = DNAEncoder.from_checkpoint("runs/genomics/gue_caduceus_ps/checkpoints/best.ckpt")
    out = enc.embed(["ACGT...", "GGCA..."])        # out["pooled"] (N, D), out["tokens"][i] (L_i, F)
    probs = enc.predict("reads.fa")                 # (N, num_classes), needs a fine-tuned head
    enc.fit(sequences, labels, epochs=3)            # or train a head (and the backbone) here
    enc.save("enc.pt"); enc = DNAEncoder.load("enc.pt")

Sequences longer than the tokenizer's ``max_length`` are tiled into consecutive windows
(``overflow="tile"``): token embeddings are concatenated back, the pooled embedding and
class probabilities are the length-weighted mean over tiles. ``overflow="error"`` refuses
them and ``"truncate"`` keeps the first window.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from omniseq._files import UnsafeFileError
from omniseq.api._saved import load_payload, save_payload
from omniseq.backbones.dna import DNAModel
from omniseq.domains.genomics import NucleotideTokenizer, iter_sequences
from omniseq.recipes.catalogue import registered_class, registered_name
from omniseq.recipes.checkpoints import read_checkpoint
from omniseq.recipes.genomics import DNAPretrainTask, SequenceClassificationTask
from omniseq.recipes.progress import fit_callbacks

__all__ = ["DNAEncoder"]

SequencesLike = str | Path | Sequence[str]


def _build(name: str, config: dict, path: str | Path) -> nn.Module:
    """The backbone registered as ``name`` (files of earlier versions give its class path)."""
    cls = registered_class(name)
    if cls is None:
        raise UnsafeFileError(
            f"DNAEncoder file {path} asks to build {name!r}, which is not a registered omniseq backbone "
            "(`omniseq list`); omniseq builds only its own classes from a file")
    return cls(**config)


class DNAEncoder:
    """A DNA backbone with its tokenizer and an optional classification head.

    Args:
        backbone: ``DNAModel`` / ``DNACNN`` (default: a small Caduceus-PS).
        tokenizer: the tokenizer the backbone was trained with (default: characters,
            ``max_length`` 4096, tiling longer inputs).
        head: ``nn.Module`` mapping pooled embeddings to class logits, or None.
        batch_size: inference batch size.
        classes: names of the head's classes, in the order of :meth:`predict`'s columns
            (set by :meth:`fit` from string labels; None for integer classes).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        tokenizer: NucleotideTokenizer | None = None,
        head: nn.Module | None = None,
        batch_size: int = 64,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.classes = None if classes is None else list(classes)
        self.backbone = backbone or DNAModel(dim=128, depth=4, mixer_options={"d_state": 8}, rc_mode="ps")
        self.tokenizer = tokenizer or NucleotideTokenizer(max_length=4096, overflow="tile")
        self.head = head
        self.batch_size = batch_size

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, **tokenizer_options) -> DNAEncoder:
        """From a ``SequenceClassificationTask`` (backbone + head) or ``DNAPretrainTask`` checkpoint
        written by the ``omniseq`` CLI (its backbone config is stored in the checkpoint)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        state = read_checkpoint(path)
        if "state_dict" not in state:
            raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict'); for DNAEncoder.save files use "
                             "DNAEncoder.load")
        is_classifier = any(k.startswith("head.") for k in state["state_dict"])
        task_cls = SequenceClassificationTask if is_classifier else DNAPretrainTask
        task = task_cls.load_from_checkpoint(path, map_location="cpu")
        options = {"mode": task.hparams.get("tokenizer_mode", "char"), "k": task.hparams.get("k", 6),
                   "max_length": getattr(task.backbone, "max_length", None) or 4096, "overflow": "tile"}
        tokenizer = NucleotideTokenizer(**{**options, **tokenizer_options})
        return cls(task.backbone, tokenizer, task.head if is_classifier else None)

    def save(self, path: str | Path) -> None:
        """One file: backbone and head classes, configs and weights, and the tokenizer settings."""
        if not hasattr(self.backbone, "config"):
            raise ValueError("save needs a backbone with a .config dict (DNAModel, DNACNN)")
        name = registered_name(type(self.backbone))
        if name is None:
            raise ValueError(f"save needs a registered backbone (`omniseq list`), got {type(self.backbone).__name__}")
        payload = {
            "backbone": name, "backbone_config": self.backbone.config,
            "backbone_state": self.backbone.state_dict(), "tokenizer": self.tokenizer.config(),
            "head_state": None if self.head is None else self.head.state_dict(),
            "head_shape": None if self.head is None else self._head_shape(),
            "classes": self.classes,
        }
        save_payload(payload, path, "DNAEncoder")

    @classmethod
    def load(cls, path: str | Path) -> DNAEncoder:
        keys = ("backbone_config", "backbone_state", "tokenizer", "head_state")
        payload = load_payload(path, "DNAEncoder", keys, has_from_checkpoint=True)
        # "backbone_class" (a class path) in files of earlier versions: looked up, never imported.
        name = payload.get("backbone", payload.get("backbone_class"))
        backbone = _build(name, payload["backbone_config"], path)
        backbone.load_state_dict(payload["backbone_state"])
        head = None
        if payload["head_state"] is not None:
            head = nn.Sequential(nn.Dropout(0.0), nn.Linear(*payload["head_shape"]))
            head.load_state_dict(payload["head_state"])
        return cls(backbone, NucleotideTokenizer(**payload["tokenizer"]), head, classes=payload.get("classes"))

    def _head_shape(self) -> tuple[int, int]:
        linear = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        if len(linear) != 1:
            raise ValueError("save supports heads with one nn.Linear layer")
        return linear[0].in_features, linear[0].out_features

    # -- inference ---------------------------------------------------------------------

    def _sequences(self, sequences: SequencesLike) -> tuple[list[str], list[str]]:
        # A DNA string never holds '/' or '.', so such a string is a path, not a sequence.
        looks_like_path = isinstance(sequences, Path) or (isinstance(sequences, str) and any(c in sequences for c in "/\\."))
        if looks_like_path or (isinstance(sequences, str) and Path(sequences).is_file()):
            if not Path(sequences).is_file():
                raise FileNotFoundError(
                    f"{sequences}: no such FASTA file (a string with '/' or '.' is read as a path; "
                    "pass a list of strings to embed sequences)"
                )
            pairs = list(iter_sequences(sequences))  # FASTA or FASTQ
            return [s for _, s in pairs], [r for r, _ in pairs]
        if isinstance(sequences, str):
            sequences = [sequences]
        sequences = list(sequences)
        if not sequences:
            raise ValueError("no sequences given")
        return sequences, [f"sequence {i}" for i in range(len(sequences))]

    @torch.no_grad()
    def _run(self, sequences: SequencesLike, tokens: bool) -> dict:
        seqs, names = self._sequences(sequences)
        batch = self.tokenizer.batch_encode(seqs, names)
        self.backbone.eval()
        lengths = batch["attention_mask"].sum(1)
        pooled = torch.zeros(len(lengths), self.backbone.pooled_dim)
        feats: list[torch.Tensor | None] = [None] * len(lengths)
        # Rows of one length run together, unpadded: a bidirectional scan would read the
        # padding, making an embedding depend on its batch-mates.
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero()[:, 0]
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                ids = batch["input_ids"][chunk, :length]
                pooled[chunk] = self.backbone.forward_pooled(ids)
                if tokens:
                    for j, f in zip(chunk.tolist(), self.backbone.forward_features(ids), strict=True):
                        feats[j] = f
        weight = batch["attention_mask"].sum(1, keepdim=True).to(pooled.dtype)
        source = batch["source"]
        total = torch.zeros(len(seqs), 1).index_add_(0, source, weight)
        per_seq = torch.zeros(len(seqs), pooled.shape[1]).index_add_(0, source, pooled * weight) / total
        out = {"ids": names, "pooled": per_seq, "rows": pooled, "row_weight": weight, "source": source}
        if tokens:
            out["tokens"] = [torch.cat([feats[j] for j in (source == i).nonzero()[:, 0].tolist()]).numpy()
                             for i in range(len(seqs))]
        return out

    def embed(self, sequences: SequencesLike, tokens: bool = True) -> dict:
        """``{"ids": names, "pooled": (N, D) array, "tokens": [ (L_i, F) arrays ]}`` for strings or a FASTA path."""
        out = self._run(sequences, tokens)
        result = {"ids": out["ids"], "pooled": out["pooled"].numpy()}
        if tokens:
            result["tokens"] = out["tokens"]
        return result

    @torch.no_grad()
    def predict(self, sequences: SequencesLike) -> np.ndarray:
        """Class probabilities ``(N, num_classes)`` (tiles averaged by length); with string
        labels in :meth:`fit`, column ``j`` is class ``self.classes[j]``."""
        if self.head is None:
            raise RuntimeError("predict needs a classification head: load a fine-tuned checkpoint or call fit()")
        self.head.eval()
        out = self._run(sequences, tokens=False)
        probs = self.head(out["rows"]).softmax(-1) * out["row_weight"]
        n = len(out["ids"])
        total = torch.zeros(n, 1).index_add_(0, out["source"], out["row_weight"])
        return (torch.zeros(n, probs.shape[1]).index_add_(0, out["source"], probs) / total).numpy()

    # -- training ----------------------------------------------------------------------

    def fit(
        self, sequences: Sequence[str], labels: Sequence[int], epochs: int = 3, lr: float = 1e-3,
        batch_size: int = 32, freeze_backbone: bool = False, seed: int = 0, verbose: bool = True,
    ) -> DNAEncoder:
        """Train a classification head (and the backbone unless frozen) on labelled sequences.

        ``labels`` are integer class indices (0..C-1) or class names (strings): names are
        sorted, numbered, and kept in ``self.classes`` (the order of :meth:`predict`'s columns).
        ``verbose`` prints a progress line every 30 s and why training stopped.
        """
        if len(sequences) != len(labels):
            raise ValueError(f"fit: {len(sequences)} sequences but {len(labels)} labels")
        indices, self.classes = _class_indices(labels.tolist() if hasattr(labels, "tolist") else list(labels))
        L.seed_everything(seed, verbose=False)
        tokenizer = NucleotideTokenizer(self.tokenizer.mode, k=self.tokenizer.k,
                                        max_length=self.tokenizer.max_length, overflow="truncate")
        batch = tokenizer.batch_encode(list(sequences))
        y = torch.as_tensor(indices, dtype=torch.long)
        num_classes = int(y.max()) + 1
        task = SequenceClassificationTask(self.backbone, num_classes=max(num_classes, 2), lr=lr,
                                          freeze_backbone=freeze_backbone, tokenizer_mode=tokenizer.mode,
                                          k=tokenizer.k, warmup_steps=1)
        data = TensorDataset(batch["input_ids"], batch["attention_mask"], y)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=_collate,
                            generator=torch.Generator().manual_seed(seed))
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, accelerator="cpu", **fit_callbacks(verbose))
        trainer.fit(task, loader)
        self.head = task.head
        return self


def _class_indices(labels: list) -> tuple[list[int], list[str] | None]:
    """Integer labels as they are; string labels numbered in sorted order (with the names)."""
    if labels and all(isinstance(y, str) for y in labels):
        classes = sorted(set(labels))
        number = {name: i for i, name in enumerate(classes)}
        return [number[y] for y in labels], classes
    for index, y in enumerate(labels):
        if isinstance(y, str) or not isinstance(y, (int, np.integer)) or isinstance(y, bool) or y < 0:
            raise ValueError(
                f"fit: label {y!r} at index {index} is not a class; pass non-negative integer class "
                "indices or class names (all strings), not a mix"
            )
    return [int(y) for y in labels], None


def _collate(rows: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    ids, mask, label = (torch.stack(col) for col in zip(*rows, strict=True))
    return {"input_ids": ids, "attention_mask": mask, "label": label}
