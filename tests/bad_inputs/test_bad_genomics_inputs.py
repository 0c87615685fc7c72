"""Unusual but legal genomics inputs (issue 14, section 3, and issue 18's friction list):
each gives the right result or stops with an error naming the file, the record/row and the fix."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from omniseq.api.dna_encoder import DNAEncoder
from omniseq.backbones.dna import DNAModel
from omniseq.data.genomics import GenomePretrainDataModule, SequenceClassificationDataModule
from omniseq.domains.genomics import NucleotideTokenizer, read_labeled


def _splits(folder: Path, train: str, dev: str | None = None, test: str | None = None, suffix: str = ".csv") -> str:
    for split, text in (("train", train), ("dev", dev or train), ("test", test or train)):
        (folder / f"{split}{suffix}").write_bytes(text.encode("latin-1") if isinstance(text, str) else text)
    return str(folder)


def test_duplicate_fasta_ids_with_a_labels_csv_are_refused(tmp_path):
    # Before: both records named 'a' got the one label of 'a' in the CSV.
    (tmp_path / "train.fa").write_text(">a\nACGTAC\n>b\nTTTTGG\n>a\nGGGCCC\n")
    (tmp_path / "train.labels.csv").write_text("id,label\na,0\nb,1\n")
    with pytest.raises(ValueError, match=r"train\.fa: record id 'a' occurs more than once \(records 0 and 2"
                                         r".*train\.labels\.csv cannot tell them apart; give every record a unique id"):
        read_labeled(tmp_path / "train.fa", tmp_path / "train.labels.csv")


def test_empty_sequence_cell_in_a_gue_csv_names_file_and_row(tmp_path):
    # Before: AttributeError ('float' object has no attribute 'encode') from the tokenizer.
    folder = _splits(tmp_path, "sequence,label\nACGT,0\n,1\nACGA,1\n")
    with pytest.raises(ValueError, match=r"train\.csv: row 1 \(line 3 of the file\) has an empty sequence cell"
                                         r".*fill in the sequence or drop the row"):
        SequenceClassificationDataModule(data_dir=folder).setup()


def test_sequence_nan_is_bases_not_a_missing_value(tmp_path):
    seqs, _, _ = read_labeled(Path(_splits(tmp_path, "sequence,label\nNA,0\nACGT,1\n")) / "train.csv")
    assert seqs == ["NA", "ACGT"]


@pytest.mark.parametrize("gzipped", [False, True])
def test_non_ascii_byte_in_a_fasta_names_record_position_and_byte(tmp_path, gzipped):
    # Before: "not valid FASTA: each record starts with a '>id' line ('ascii' codec can't decode ...)".
    data = ">r1\nACGTACGT\n>r2 some description\nACG\xc3\xa9TT\n".encode("latin-1")
    path = tmp_path / ("g.fa.gz" if gzipped else "g.fa")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    with pytest.raises(ValueError, match=r"g\.fa(\.gz)? record 'r2': non-ASCII byte 0xC3 at position 3 \(0-based\)"):
        GenomePretrainDataModule(str(path), seq_len=2).setup()


def test_non_ascii_in_a_csv_and_in_python_strings(tmp_path):
    folder = _splits(tmp_path, "sequence,label\nACGT,0\nAC\xe9T,1\n")
    with pytest.raises(ValueError, match=r"train\.csv row 1: non-ASCII byte 0xE9 at position 2"):
        SequenceClassificationDataModule(data_dir=folder).setup()
    with pytest.raises(ValueError, match=r"sequence 0: non-ASCII character '\u2014' \(U\+2014\) at position 4"):
        NucleotideTokenizer().batch_encode(["ACGT\u2014A"])


def _tiny_encoder() -> DNAEncoder:
    return DNAEncoder(DNAModel(dim=16, depth=1, mixer="attention", pos_embed="sinusoidal"),
                      NucleotideTokenizer(max_length=16, overflow="tile"))


def test_string_labels_in_dna_encoder_fit_are_mapped_to_classes(tmp_path):
    # Before: "too many dimensions 'str'" from torch.as_tensor.
    seqs = ["ACGTTATAATGG", "ACGTCCGCAGGG"] * 8
    encoder = _tiny_encoder().fit(seqs, ["promoter", "background"] * 8, epochs=1, batch_size=8)
    assert encoder.classes == ["background", "promoter"]
    assert encoder.head[-1].out_features == 2 and encoder.predict(seqs[:3]).shape == (3, 2)
    encoder.save(tmp_path / "enc.pt")
    assert DNAEncoder.load(tmp_path / "enc.pt").classes == ["background", "promoter"]


@pytest.mark.parametrize("labels", [[0, 1.5], [0, "b"], [0, -1]])
def test_labels_that_are_not_classes_are_refused(labels):
    with pytest.raises(ValueError, match=r"fit: label .* at index 1 is not a class; pass non-negative integer"):
        _tiny_encoder().fit(["ACGT", "GGCC"], labels, epochs=1)


def test_u_reads_as_t_and_the_error_text_says_so():
    tokenizer = NucleotideTokenizer()
    np.testing.assert_array_equal(tokenizer.encode("ACGU"), tokenizer.encode("ACGT"))
    np.testing.assert_array_equal(tokenizer.encode("acgu"), tokenizer.encode("acgt"))
    with pytest.raises(ValueError, match=r"invalid character 'X' at position 2 .*U \(read as T\)"):
        tokenizer.encode("ACX")


# -- pretraining on genomes as users have them (issue 18) ----------------------------------------


def test_gue_task_and_data_dir_together_is_an_error(tmp_path):
    folder = _splits(tmp_path, "sequence,label\nACGT,0\nACGA,1\n")
    with pytest.raises(ValueError, match=r"both a GUE task \('tf0'\) and a data folder .* were given; pass one"):
        SequenceClassificationDataModule(task="tf0", data_dir=folder)
    # A recipe's default task gives way to a folder (before: the recipe's task silently won).
    data = SequenceClassificationDataModule(data_dir=folder, default_task="prom_core_all")
    data.setup()
    assert data.task is None and len(data.datasets["train"]) == 2
    with pytest.raises(FileNotFoundError, match=r"data_dir '.*absent' is not a folder"):
        SequenceClassificationDataModule(data_dir=str(tmp_path / "absent"))


def test_heldout_tail_too_short_says_so(tmp_path):
    (tmp_path / "g.fa").write_text(">chr\n" + "ACGT" * 25 + "\n")  # 100 bp: 90 train, 10 held out
    with pytest.raises(ValueError, match=r"g\.fa: the held-out tail is too short for seq_len=50: its longest "
                                         r"segment has 10 tokens .*lower seq_len, raise holdout_fraction"):
        GenomePretrainDataModule(str(tmp_path / "g.fa"), seq_len=50).setup()


@pytest.mark.parametrize("recipe", ["genomics/gue_caduceus_ps"])
def test_gue_recipe_with_data_dir_alone_reads_the_folder(tmp_path, recipe):
    from omniseq.recipes.cli import build_cli, resolve_config_args

    folder = _splits(tmp_path, "sequence,label\nACGT,0\nACGA,1\n")
    config = resolve_config_args(["--config", recipe])[1]
    cli = build_cli(["--config", config, "--data.data_dir", folder, "--trainer.default_root_dir", str(tmp_path)],
                    run=False)
    assert cli.datamodule.task is None and str(cli.datamodule.data_dir) == folder
    with pytest.raises(ValueError, match=r"both a GUE task \('tf0'\) and a data folder"):
        build_cli(["--config", config, "--data.data_dir", folder, "--data.task", "tf0"], run=False)
