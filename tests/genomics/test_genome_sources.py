"""Pretraining on genomes as users have them: folders, globs, lists, FASTQ, gzip, short
records, runs of N (issue 18, item 3)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from omniseq.data.genomics import GenomePretrainDataModule, genome_files
from omniseq.domains.genomics import NucleotideTokenizer

TOKENIZER = NucleotideTokenizer()


def _genome(length: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), length))


def _write_collection(folder):
    """Four records in four layouts: plain FASTA, gzip FASTA, gzip FASTQ, and a short record."""
    a, b, c = _genome(400, 1), _genome(300, 2), _genome(200, 3)
    (folder / "a.fa").write_text(f">a\n{a[:150]}\n{a[150:]}\n")
    (folder / "b.fna.gz").write_bytes(gzip.compress(f">b desc\n{b}\n>tiny\nACGTACGT\n".encode()))
    (folder / "c.fastq.gz").write_bytes(gzip.compress(f"@c\n{c}\n+\n{'I' * len(c)}\n".encode()))
    (folder / "notes.txt").write_text("not a genome")
    return {"a": a, "b": b, "c": c}


def _decoded(dataset) -> list[str]:
    return [TOKENIZER.decode(dataset[i]["input_ids"]) for i in range(len(dataset))]


def test_folder_glob_and_list_read_the_same_files(tmp_path):
    _write_collection(tmp_path)
    names = [p.name for p in genome_files(str(tmp_path))]
    assert names == ["a.fa", "b.fna.gz", "c.fastq.gz"]  # sorted, notes.txt ignored
    assert [p.name for p in genome_files(str(tmp_path / "*.gz"))] == ["b.fna.gz", "c.fastq.gz"]
    assert genome_files([str(tmp_path / "a.fa"), str(tmp_path / "*.fastq.gz")]) == [tmp_path / "a.fa",
                                                                                       tmp_path / "c.fastq.gz"]
    with pytest.raises(FileNotFoundError, match=r"\*\.fq: the pattern matches no file"):
        genome_files(str(tmp_path / "*.fq"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: the folder holds no FASTA/FASTQ file"):
        genome_files(str(tmp_path / "empty"))


def test_windows_come_from_every_file_and_only_from_training_parts(tmp_path):
    records = _write_collection(tmp_path)
    data = GenomePretrainDataModule(str(tmp_path), seq_len=16, train_windows=300, val_windows=50, batch_size=4)
    with pytest.warns(UserWarning, match=r"1 of 4 record\(s\) are shorter than seq_len=16 in the training part"):
        data.setup()
    train_parts = {k: s[: round(len(s) * 0.9)] for k, s in records.items()}
    held_parts = {k: s[round(len(s) * 0.9):] for k, s in records.items()}
    sources = set()
    for window in _decoded(data.datasets["train"]):
        found = [k for k, part in train_parts.items() if window in part]
        assert found, window
        sources.update(found)
    assert sources == {"a", "b", "c"}
    assert all(any(w in part for part in held_parts.values()) for w in _decoded(data.datasets["val"]))
    assert data.num_train_tokens == sum(len(p) for p in train_parts.values()) + 7  # 'tiny': 8 bp, 7 kept


def test_mostly_n_windows_are_skipped_with_a_threshold(tmp_path):
    genome = _genome(300, 4) + "N" * 200 + _genome(500, 5)  # 1000 bp; held-out tail 900..1000
    (tmp_path / "g.fa").write_text(f">g\n{genome}\n")
    data = GenomePretrainDataModule(str(tmp_path / "g.fa"), seq_len=20, train_windows=400, max_n_fraction=0.25)
    data.setup()
    windows = _decoded(data.datasets["train"])
    assert max(w.count("N") for w in windows) <= 5
    assert any(w.count("N") for w in windows)  # windows at the edge of the run, within the threshold
    # The skipped starts: those whose window holds more than 5 of the 200 N.
    assert data.datasets["train"].mostly_n_starts == 200 + 20 - 1 - 2 * 5
    keep_all = GenomePretrainDataModule(str(tmp_path / "g.fa"), seq_len=20, train_windows=400, max_n_fraction=1.0)
    keep_all.setup()
    assert max(w.count("N") for w in _decoded(keep_all.datasets["train"])) == 20


def test_all_n_is_an_error_naming_the_threshold(tmp_path):
    (tmp_path / "g.fa").write_text(">g\n" + "N" * 1000 + "\n")
    with pytest.raises(ValueError, match=r"every window is mostly N in the training part .*raise max_n_fraction=0\.5"):
        GenomePretrainDataModule(str(tmp_path / "g.fa"), seq_len=20).setup()


def test_reads_hold_out_whole_records(tmp_path):
    reads = [_genome(100, i) for i in range(10)]
    (tmp_path / "r.fq").write_text("".join(f"@r{i}\n{s}\n+\n{'I' * 100}\n" for i, s in enumerate(reads)))
    data = GenomePretrainDataModule(str(tmp_path / "r.fq"), seq_len=100, holdout="records", holdout_fraction=0.2,
                                    train_windows=40, val_windows=10)
    data.setup()
    assert set(_decoded(data.datasets["train"])) <= set(reads[:8])
    assert _decoded(data.datasets["val"]) == reads[8:]


def test_dna_encoder_embeds_a_fastq_like_its_strings(tmp_path):
    from omniseq.api.dna_encoder import DNAEncoder
    from omniseq.backbones.dna import DNAModel

    (tmp_path / "r.fq").write_text("@q1\nACGTAC\n+\nIIIIII\n@q2\nGGCA\n+\nIIII\n")
    encoder = DNAEncoder(DNAModel(dim=16, depth=1, mixer="attention", pos_embed="sinusoidal"))
    out = encoder.embed(str(tmp_path / "r.fq"), tokens=False)
    assert out["ids"] == ["q1", "q2"]
    np.testing.assert_allclose(out["pooled"], encoder.embed(["ACGTAC", "GGCA"], tokens=False)["pooled"], rtol=1e-6)
