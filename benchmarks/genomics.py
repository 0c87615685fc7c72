"""GUE benchmark: MCC of small Caduceus-PS, attention and CNN models, with and without
masked-LM pretraining on the E. coli K-12 chromosome, plus long-context memory.

Protocol (DNABERT-2, Zhou et al. ICLR 2024): fine-tune on ``train``, select on ``dev``
(MCC, checked every ``--eval-every`` steps), report ``test`` MCC at the selected step.
``--full`` builds the whole table (9 tasks x 3 models x scratch / +E. coli) under one
CPU-sized protocol, resumable cell by cell (``benchmarks/gue_table.py`` states it):
run it again and it continues where the last run stopped. ``--*-minutes`` flags run
a reduced, wall-clock-budgeted version instead, and the output states what was run.

    nice -n 5 python benchmarks/genomics.py --full     # resumable; cells in benchmarks/gue_table/
    python benchmarks/genomics.py --full --table-only     # print the table of the finished cells
    python benchmarks/genomics.py --tasks prom_core_tata tf0 --pretrain-minutes 1.5 \
        --finetune-minutes 0.5 --max-train-samples 4000 --out /tmp/gue.json
    python benchmarks/genomics.py --memory-only          # peak RSS of one fwd+bwd at L = 32768

The table sets each task beside DNABERT-2's published test MCC (``PUBLISHED``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_matthews_corrcoef

from omniseq.backbones.cnn1d import DNACNN
from omniseq.backbones.dna import DNAModel
from omniseq.data.genomics import (
    GUE_TASKS,
    GenomePretrainDataModule,
    SequenceClassificationDataModule,
)
from omniseq.domains.genomics import NucleotideTokenizer, mask_tokens
from omniseq.recipes.genomics import random_reverse_complement

sys.path.insert(0, str(Path(__file__).parent))
import gue_table  # noqa: E402  (benchmarks/ is not a package)

# DNABERT-2 (117M) test MCC per GUE task: Zhou et al., "DNABERT-2: Efficient Foundation
# Model and Benchmark for Multi-Species Genomes", ICLR 2024, https://arxiv.org/abs/2306.15006
# (v2), Appendix A.1 Table 6 (all 28 GUE datasets), row "DNABERT-2" -- not the diamond row,
# which further pre-trains on the GUE training sets. The paper prints MCC x 100, the mean of
# three seeds; here divided by 100 to match torchmetrics' MCC. Paper columns: Core Promoter
# Detection all/notata/tata = prom_core_*, Promoter Detection tata = prom_300_tata,
# Transcription Factor Prediction (Human) 0-4 = tf0-tf4.
# Not read from the PDF itself: taken from two independent public transcriptions of that
# table, which agree on all eight prom_core_* and tf* values (github.com BioArc paper notes
# comparing against DNABERT-2 on TFP-0..4 / CPD-all/notata/tata; a DNAZEN fine-tuning report
# script listing all 28 DNABERT-2 MCCs); prom_300_tata (71.59) is in the second only.
PUBLISHED: dict[str, float] = {
    "prom_core_all": 0.6937, "prom_core_notata": 0.6804, "prom_core_tata": 0.7417,
    "prom_300_tata": 0.7159,
    "tf0": 0.7199, "tf1": 0.7606, "tf2": 0.6652, "tf3": 0.5854, "tf4": 0.7743,
}

def caduceus_ps_cpu(patch_size: int = 1, patch_kernel: int | None = None) -> DNAModel:
    """Caduceus-PS at the recipes' CPU size: wide, shallow, expand 1 and N 8, so the
    parameters sit in matmuls rather than in the scan, on k-mer tokens of ``patch_size``
    bases (``ceil(L / s)`` tokens through the blocks; ``patch_kernel``: stem windows
    of that many bases, overlapping neighbours)."""
    return DNAModel(dim=448, depth=3, mixer="mamba", mixer_options={"d_state": 8, "expand": 1}, rc_mode="ps",
                    channel_mixer="none", norm="rmsnorm", patch_size=patch_size, patch_kernel=patch_kernel)


MODELS = {
    # genomics/gue_caduceus_ps (0.55M parameters) on 6-base tokens: the step costs 2.6-2.8x
    # the CNN's (benchmarks/genomics_speed.py), one base per token 15-18x.
    "caduceus_ps": lambda: caduceus_ps_cpu(patch_size=6),
    # Learned positions (BERT/DNABERT): with fixed sinusoidal ones this model could not even
    # memorise one batch of tf0 in 150 steps (loss 0.47; learned: 0.001). 512 covers GUE
    # (70-300 bp) and the pretraining windows.
    "attention": lambda: DNAModel(dim=64, depth=3, mixer="attention", num_heads=4, channel_mixer="mlp",
                                  mlp_ratio=4.0, norm="layernorm", pos_embed="learned", max_length=512),
    "cnn": lambda: DNACNN(dim=64, depth=3, kernel_size=9),
}
# Candidates that --models can name, outside the default table: the CPU size on one
# base per token (k1, the table's Caduceus-PS until the k-mer stem) and on s-base
# tokens (ks; "w": stem windows of that many bases).
CANDIDATES = {
    **{f"caduceus_ps_k{size}": (lambda size=size: caduceus_ps_cpu(size)) for size in (1, 2, 3, 4, 5, 6)},
    "caduceus_ps_k4w8": lambda: caduceus_ps_cpu(4, 8),
    "caduceus_ps_k6w12": lambda: caduceus_ps_cpu(6, 12),
}


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pretrain(model: torch.nn.Module, minutes: float | None, seq_len: int, batch_size: int, seed: int,
             device: str = "cpu", max_steps: int | None = None) -> dict:
    """MLM on E. coli (last 10% held out) for ``max_steps`` and/or a wall-clock budget
    (whichever ends first); held-out perplexity before/after."""
    if minutes is None and max_steps is None:
        raise ValueError("pretrain: give minutes, max_steps or both")
    data = GenomePretrainDataModule("ecoli_k12", seq_len=seq_len, train_windows=10**6, val_windows=64,
                                    batch_size=batch_size, seed=seed)
    data.setup()
    tok = NucleotideTokenizer()
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))

    def mlm_loss(ids, generator=None):
        inputs, labels = mask_tokens(ids.cpu(), ids.cpu() >= tok.num_special, tok.mask_id, tok.base_ids, 0.15, generator)
        inputs, labels = inputs.to(device), labels.to(device)
        logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def heldout_ppl() -> float:
        model.eval()
        with torch.no_grad():
            losses = [mlm_loss(b["input_ids"], torch.Generator().manual_seed(i)).item()
                      for i, b in enumerate(data.val_dataloader())]
        model.train()
        return math.exp(float(np.mean(losses)))

    before = heldout_ppl()
    start, steps, curve = time.time(), 0, []
    model.train()
    for batch in data.train_dataloader():
        if (minutes is not None and time.time() - start > minutes * 60) or steps == max_steps:
            break
        ids = random_reverse_complement(batch["input_ids"], tok.complement_ids).to(device)
        lr_scale = min(1.0, (steps + 1) / 50)
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * lr_scale
        loss = mlm_loss(ids)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
        if steps % 20 == 0:
            curve.append((steps, round(loss.item(), 4)))
    return {"steps": steps, "seconds": round(time.time() - start, 1), "heldout_ppl_before": round(before, 4),
            "heldout_ppl_after": round(heldout_ppl(), 4), "train_loss_curve": curve}


def evaluate(model, head, loader, limit: int | None = None, device: str = "cpu") -> float:
    model.eval()
    preds, labels, seen = [], [], 0
    with torch.no_grad():
        for batch in loader:
            logits = head(model.forward_pooled(batch["input_ids"].to(device), batch["attention_mask"].to(device)))
            preds.append(logits.argmax(-1).cpu())
            labels.append(batch["label"])
            seen += len(batch["label"])
            if limit is not None and seen >= limit:
                break
    model.train()
    return float(multiclass_matthews_corrcoef(torch.cat(preds), torch.cat(labels), num_classes=2))


def finetune(model, task: str, minutes: float | None, max_train: int | None, max_dev: int | None,
             eval_every: int, batch_size: int, seed: int, device: str = "cpu", max_epochs: int | None = None,
             steps_for: Callable[[int], int] | None = None) -> dict:
    """Train on ``task``'s train split for ``max_epochs``, ``steps_for(steps per epoch)`` steps
    and/or a wall-clock budget (whichever ends first), keep the dev-best weights (MCC every
    ``eval_every`` steps and at the end), report test MCC."""
    if minutes is None and max_epochs is None and steps_for is None:
        raise ValueError("finetune: give minutes, max_epochs, steps_for or a combination")
    data = SequenceClassificationDataModule(task=task, max_train_samples=max_train, batch_size=batch_size, seed=seed)
    data.setup()
    head = torch.nn.Linear(model.pooled_dim, data.num_classes).to(device)
    model.to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    comp = NucleotideTokenizer().complement_ids
    best = (-2.0, None, 0)

    def keep_if_best() -> None:
        nonlocal best
        mcc = evaluate(model, head, data.val_dataloader(), max_dev, device)
        if mcc > best[0]:
            best = (mcc, copy.deepcopy((model.state_dict(), head.state_dict())), steps)

    max_steps = None if steps_for is None else steps_for(len(data.train_dataloader()))
    start, steps, epochs, out_of_time = time.time(), 0, 0, False
    while not out_of_time and epochs != max_epochs and steps != max_steps:
        for batch in data.train_dataloader():
            mask = batch["attention_mask"].to(device)
            ids = random_reverse_complement(batch["input_ids"].to(device), comp, mask)
            loss = F.cross_entropy(head(model.forward_pooled(ids, mask)), batch["label"].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            out_of_time = minutes is not None and time.time() - start > minutes * 60
            if steps % eval_every == 0 or out_of_time:
                keep_if_best()
            if out_of_time or steps == max_steps:
                break
        epochs += 1
    if steps % eval_every and not out_of_time:  # the final steps
        keep_if_best()
    model.load_state_dict(best[1][0])
    head.load_state_dict(best[1][1])
    test_mcc = evaluate(model, head, data.test_dataloader(), device=device)
    return {"test_mcc": round(test_mcc, 4), "dev_mcc": round(best[0], 4), "best_step": best[2], "steps": steps,
            "epochs": epochs, "train_samples": len(data.datasets["train"]), "test_samples": len(data.datasets["test"])}


def measure_memory(length: int) -> dict:
    """Peak RSS growth of one MLM forward + backward of a tiny Caduceus-PS at ``length``, in a fresh process."""
    code = f"""
import resource, time, torch, torch.nn.functional as F
from omniseq.backbones.dna import DNAModel
torch.manual_seed(0)
model = DNAModel(dim=64, depth=2, mixer_options={{"d_state": 16}}, rc_mode="ps")
ids = torch.randint(5, 9, (1, {length}))
def status(key):  # kB; VmHWM (peak RSS) is per process image, unlike ru_maxrss which survives exec
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
base = status("VmRSS")
t = time.time()
loss = F.cross_entropy(model(ids)[0], ids[0])
loss.backward()
print(base, status("VmHWM"), time.time() - t, sum(p.numel() for p in model.parameters()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base, peak, seconds, params = int(out[0]), int(out[1]), float(out[2]), int(out[3])
    return {"length": length, "params": params, "peak_rss_mib": round(peak / 1024, 1),
            "growth_mib": round((peak - base) / 1024, 1), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(GUE_TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS) + list(CANDIDATES))
    parser.add_argument("--inits", nargs="+", default=["scratch", "ecoli"], choices=["scratch", "ecoli"],
                        help="with --full: which cells of each model to run (scratch, +E. coli pretraining)")
    parser.add_argument("--pretrain-minutes", type=float, default=1.5)
    parser.add_argument("--finetune-minutes", type=float, default=0.5)
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("--max-dev-samples", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--pretrain-seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=None, help="cap on pretraining steps")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="cap on fine-tuning epochs")
    parser.add_argument("--full", action="store_true",
                        help="the whole GUE table under gue_table.PROTOCOL, resumable cell by cell in --results-dir")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "gue_table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of --full")
    parser.add_argument("--table-only", action="store_true", help="with --full: print the finished cells, run nothing")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--memory-length", type=int, default=32768)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (Triton kernels on a GPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.full:
        models = {name: {**MODELS, **CANDIDATES}[name] for name in args.models}
        hashes = {name: gue_table.model_hash(build()) for name, build in models.items()}
        cells = gue_table.read_cells(args.results_dir)
        if not args.table_only:
            print("protocol", json.dumps(gue_table.PROTOCOL), flush=True)
            cells = gue_table.run_table(args.results_dir, models, args.tasks, args.seeds, finetune, pretrain, num_params,
                                        inits=args.inits)
        print(gue_table.table_markdown(cells, hashes, args.tasks, PUBLISHED, args.seeds[0]))
        return
    torch.manual_seed(args.seed)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "memory": measure_memory(args.memory_length)}
    print(json.dumps(results["memory"]), flush=True)
    if not args.memory_only:
        results["models"] = {}
        for name in args.models:
            torch.manual_seed(args.seed)
            scratch = {**MODELS, **CANDIDATES}[name]()
            entry = {"params": num_params(scratch), "pretrain": None, "gue": {}}
            pretrained = copy.deepcopy(scratch)
            entry["pretrain"] = pretrain(pretrained, args.pretrain_minutes, args.pretrain_seq_len, 16, args.seed,
                                         args.device, args.pretrain_steps)
            print(name, json.dumps(entry["pretrain"]), flush=True)
            for task in args.tasks:
                for label, init in (("scratch", scratch), ("ecoli", pretrained)):
                    model = copy.deepcopy(init)
                    res = finetune(model, task, args.finetune_minutes, args.max_train_samples,
                                   args.max_dev_samples, args.eval_every, args.batch_size, args.seed, args.device,
                                   args.finetune_epochs)
                    entry["gue"].setdefault(task, {})[label] = res
                    print(name, task, label, json.dumps(res), flush=True)
            results["models"][name] = entry
        print(markdown_table(results, args.tasks))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def markdown_table(results: dict, tasks: list[str]) -> str:
    names = list(results["models"])
    header = "| task | " + " | ".join(f"{n} scratch | {n} +E. coli" for n in names) + " | DNABERT-2 (paper) |"
    lines = [header, "|" + "---|" * (2 * len(names) + 2)]
    for task in tasks:
        cells = []
        for n in names:
            gue = results["models"][n]["gue"][task]
            cells += [f"{gue['scratch']['test_mcc']:.3f}", f"{gue['ecoli']['test_mcc']:.3f}"]
        published = PUBLISHED.get(task)
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {'n/a' if published is None else f'{published:.3f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
