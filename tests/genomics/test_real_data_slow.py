"""Real-data smoke tests (E. coli genome, GUE), the CLI recipes, and 32k-token memory. Slow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from omniseq.data.genomics import GenomePretrainDataModule, SequenceClassificationDataModule
from omniseq.domains.genomics import NucleotideTokenizer, read_gff
from tests.conftest import REPO_ROOT, shared_dataset

pytestmark = pytest.mark.slow


def test_ecoli_windows_and_holdout():
    shared_dataset("ecoli_k12_genome/GCF_000005845.2_ASM584v2_genomic.fna.gz")
    data = GenomePretrainDataModule("ecoli_k12", seq_len=1024, train_windows=64, val_windows=16, batch_size=8)
    data.setup()
    assert data.num_train_tokens + data.num_heldout_tokens == 4_641_652
    assert data.num_heldout_tokens == 4_641_652 - round(4_641_652 * 0.9)
    batch = next(iter(data.train_dataloader()))["input_ids"]
    assert batch.shape == (8, 1024) and int(batch.min()) >= 5 and int(batch.max()) <= 8


def test_ecoli_gff_features():
    path = shared_dataset("ecoli_k12_genome/GCF_000005845.2_ASM584v2_genomic.gff.gz")
    frame = read_gff(path)
    counts = frame["type"].value_counts()
    assert counts["gene"] == 4494 and counts["CDS"] == 4337


def test_gue_task_splits_as_given():
    shared_dataset("gue/prom/prom_core_tata/train.csv.gz")
    data = SequenceClassificationDataModule(task="prom_core_tata", batch_size=32)
    data.setup()
    sizes = {k: len(v) for k, v in data.datasets.items()}
    assert sizes == {"train": 4904, "val": 613, "test": 613}
    assert data.tokenizer.max_length == 70 and data.num_classes == 2
    labels = data.datasets["train"].labels.float().mean().item()
    assert 0.45 < labels < 0.55


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omniseq.recipes.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("recipe", "limits"), [
    # 26 steps stop inside the first 32-step epoch: validation every 25 steps must still run.
    ("genomics/demo_pretrain", ["--trainer.max_steps", "26"]),
    ("genomics/demo_classify", ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5"]),
])
def test_cli_recipes_run(tmp_path, recipe, limits):
    result = _cli("fit", "--config", recipe, *limits, "--trainer.limit_val_batches", "2",
                  "--trainer.default_root_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    metrics = pd.concat(pd.read_csv(f) for f in tmp_path.glob("logs/*/metrics.csv"))
    assert metrics.filter(like="val/").notna().any(axis=None)


def test_pretraining_at_32k_tokens_fits_in_memory():
    """One MLM forward+backward of a tiny Caduceus-PS at L = 32768 on CPU; peak RSS growth measured
    in a fresh process (VmHWM). The selective scan is linear in L; attention at this length would
    need L^2 = 1.07e9 scores (4 GiB in float32) per head for the score matrix alone."""
    code = """
import torch, torch.nn.functional as F
from omniseq.backbones.dna import DNAModel
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
model = DNAModel(dim=16, depth=1, mixer_options={"d_state": 16}, rc_mode="ps")
ids = torch.randint(5, 9, (1, 32768))
base = status("VmRSS")
F.cross_entropy(model(ids)[0], ids[0]).backward()
print((status("VmHWM") - base) / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mib = float(result.stdout.split()[-1])
    assert growth_mib < 3072, f"peak memory grew by {growth_mib:.0f} MiB"


def test_tokenizer_on_whole_chromosome_is_exact():
    path = shared_dataset("ecoli_k12_genome/GCF_000005845.2_ASM584v2_genomic.fna.gz")
    from omniseq.domains.genomics import read_fasta

    (_, seq), = read_fasta(path)
    ids = NucleotideTokenizer().encode(seq)
    counts = np.bincount(ids, minlength=10)[5:9]
    assert counts.tolist() == [1_142_742, 1_180_091, 1_177_437, 1_141_382]  # A C G T (README)


def test_ecoli_gff_labels_match_known_genes():
    shared_dataset("ecoli_k12_genome/GCF_000005845.2_ASM584v2_genomic.gff.gz")
    from omniseq.data.genome_annotation import GenomeAnnotationDataModule

    data = GenomeAnnotationDataModule(train_windows=16)
    data.setup()
    ids, labels = data.datasets["train"].blocks[0]
    bases = NucleotideTokenizer().decode(ids[:7000])
    # thrL: CDS 190..255 on +, starting ATG; yaaA: CDS 5683..6459 on -, its start codon read as CAT.
    assert bases[189:192] == "ATG" and labels[188] == 0 and set(labels[189:255]) == {1} and labels[255] == 0
    assert bases[6456:6459] == "CAT" and set(labels[5682:6459]) == {2}
    coding = np.isin(labels, [1, 2]).mean()
    assert 0.8 < coding < 0.92  # E. coli is ~88% coding
    assert [r[1:] for s in ("val", "test") for r in data.regions[s]] == [(3_945_404, 4_177_487), (4_177_487, 4_641_652)]


def test_ecoli_gff_recipe_runs_and_reports_per_class_f1(tmp_path):
    shared_dataset("ecoli_k12_genome/GCF_000005845.2_ASM584v2_genomic.gff.gz")
    result = _cli("fit", "--config", "genomics/ecoli_gff_cds", "--trainer.max_steps", "4",
                  "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2",
                  "--trainer.limit_test_batches", "2", "--trainer.default_root_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.concat(pd.read_csv(f) for f in tmp_path.glob("logs/*/metrics.csv"))
    for name in ("intergenic", "cds_plus", "cds_minus", "noncoding_gene", "macro"):
        assert metrics[f"test/f1_{name}"].notna().any(), name
