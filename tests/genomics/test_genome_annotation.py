"""Per-base labels from a GFF (issue 18, item 4): known labels on a tiny genome, disjoint
held-out blocks scored once per base, strand-swapped reverse complements, and a small
model that learns planted coding regions."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from omniseq.backbones.cnn1d import DNACNN
from omniseq.data.genome_annotation import (
    IGNORE_INDEX,
    GenomeAnnotationDataModule,
    annotation_labels,
)
from omniseq.domains.genomics import NucleotideTokenizer, read_gff, reverse_complement
from omniseq.recipes.genome_annotation import GenomeAnnotationTask

TOKENIZER = NucleotideTokenizer()
GFF_HEADER = "##gff-version 3\n"


def _gff_line(seqid: str, kind: str, start: int, end: int, strand: str, name: str) -> str:
    return "\t".join([seqid, "test", kind, str(start), str(end), ".", strand, ".", f"ID={name}"]) + "\n"


def test_labels_of_a_tiny_annotated_genome(tmp_path):
    gff = tmp_path / "g.gff"
    gff.write_text(GFF_HEADER + "".join([
        _gff_line("chr", "region", 1, 100, "+", "all"),          # ignored type
        _gff_line("chr", "gene", 11, 40, "+", "g1"), _gff_line("chr", "CDS", 11, 40, "+", "c1"),
        _gff_line("chr", "gene", 51, 70, "-", "g2"), _gff_line("chr", "CDS", 54, 70, "-", "c2"),
        _gff_line("chr", "gene", 81, 90, "+", "trna"), _gff_line("chr", "tRNA", 81, 90, "+", "t"),
        _gff_line("chr", "CDS", 36, 45, "-", "overlap"),          # both strands at 36..40: - wins
    ]))
    expected = np.zeros(100, dtype=np.int64)
    expected[10:40] = 1
    expected[50:53] = 3  # gene without CDS
    expected[53:70] = 2
    expected[80:90] = 3
    expected[35:45] = 2
    labels = annotation_labels(read_gff(gff), {"chr": 100}, gff)
    np.testing.assert_array_equal(labels["chr"], expected)
    with pytest.raises(ValueError, match=r"g\.gff: features on sequence\(s\) \['chr'\] that the genome does not hold"):
        annotation_labels(read_gff(gff), {"NC_1": 100}, gff)
    with pytest.raises(ValueError, match=r"g\.gff: feature 'g1' spans 11\.\.40, outside 1\.\.30 of 'chr'"):
        annotation_labels(read_gff(gff), {"chr": 30}, gff)


def _coding_genome(length: int, seed: int) -> tuple[str, str]:
    """Random genome with planted genes: + strand CDSs from four codons, - strand CDSs
    their reverse complements, AT-rich intergenic gaps. Returns (sequence, GFF text)."""
    rng = np.random.default_rng(seed)
    codons = np.array(["GCG", "CTG", "AAC", "GAT"])
    parts, lines, position = [], [], 0
    while position < length:
        gap = "".join(rng.choice(list("AATTCG"), int(rng.integers(40, 120))))
        gene = "".join(rng.choice(codons, int(rng.integers(30, 80))))
        strand = "+" if rng.random() < 0.5 else "-"
        gene = gene if strand == "+" else reverse_complement(gene)
        start = position + len(gap) + 1
        lines.append(_gff_line("chr", "CDS", start, start + len(gene) - 1, strand, f"c{start}"))
        parts += [gap, gene]
        position += len(gap) + len(gene)
    return "".join(parts), GFF_HEADER + "".join(lines)


@pytest.fixture
def coding_data(tmp_path):
    genome, gff = _coding_genome(40_000, seed=0)
    (tmp_path / "g.fa").write_text(f">chr\n{genome}\n")
    (tmp_path / "g.gff").write_text(gff)
    return tmp_path, genome


def test_heldout_blocks_are_disjoint_and_every_base_is_scored_once(coding_data):
    folder, genome = coding_data
    data = GenomeAnnotationDataModule(str(folder / "g.fa"), str(folder / "g.gff"), seq_len=300,
                                      val_fraction=0.1, test_fraction=0.2, train_windows=64)
    data.setup()
    n = len(genome)
    train_end, val_end = round(n * 0.7), round(n * 0.8)
    assert data.regions == {"train": [("chr", 0, train_end)], "val": [("chr", train_end, val_end)],
                            "test": [("chr", val_end, n)]}
    labels = annotation_labels(read_gff(folder / "g.gff"), {"chr": n}, folder / "g.gff")["chr"]
    for split, (start, end) in (("val", (train_end, val_end)), ("test", (val_end, n))):
        dataset = data.datasets[split]
        scored = np.concatenate([dataset[i]["labels"].numpy() for i in range(len(dataset))])
        scored = scored[scored != IGNORE_INDEX]
        np.testing.assert_array_equal(scored, labels[start:end])  # tiles in order, each base once
        assert TOKENIZER.decode(dataset[len(dataset) - 1]["input_ids"]) == genome[end - 300 : end]
    complement = {0: 0, 1: 2, 2: 1, 3: 3}
    flipped = 0
    for i in range(64):
        item = data.datasets["train"][i]
        window = TOKENIZER.decode(item["input_ids"])
        start = genome.find(window, 0, train_end)
        if start < 0 or start + 300 > train_end:  # a reverse-complemented window
            start = genome.find(reverse_complement(window), 0, train_end)
            expected = [complement[int(y)] for y in labels[start : start + 300][::-1]]
            flipped += 1
        else:
            expected = labels[start : start + 300].tolist()
        assert 0 <= start and start + 300 <= train_end
        assert item["labels"].tolist() == expected
    assert 16 < flipped < 48


def test_a_small_cnn_learns_planted_coding_regions(coding_data):
    folder, _ = coding_data
    L.seed_everything(0, verbose=False)
    data = GenomeAnnotationDataModule(str(folder / "g.fa"), str(folder / "g.gff"), seq_len=128,
                                      train_windows=1024, batch_size=16)
    task = GenomeAnnotationTask(DNACNN(dim=32, depth=2, kernel_size=9), lr=5e-3, warmup_steps=5)
    trainer = L.Trainer(max_steps=120, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    result = trainer.test(task, datamodule=data, verbose=False)[0]
    assert result["test/f1_cds_plus"] > 0.8 and result["test/f1_cds_minus"] > 0.8
    assert result["test/f1_intergenic"] > 0.6
    # No gene without a CDS here: that class has neither predictions nor targets.
    assert {"test/f1_macro", "test/acc", "test/mcc", "test/f1_noncoding_gene"} <= set(result)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\) or -100"):
        task.training_step({"input_ids": torch.full((1, 8), 5), "labels": torch.full((1, 8), 4)}, 0)
