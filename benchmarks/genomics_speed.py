"""Training-step time of Caduceus-PS against CNNs on GUE-length inputs (issue 18, item 1).

One step = ``forward_pooled`` of a batch of token ids, a linear head, cross-entropy,
backward and an AdamW step: what GUE fine-tuning runs. Every model is timed in the
same process, in alternating rounds, and the median is reported as process CPU time
(one torch thread), which a shared machine disturbs far less than wall time; wall
time is printed beside it. Peers: the GUE benchmark's CNN (``MODELS["cnn"]`` of
``benchmarks/genomics.py``, 0.11M parameters) and a CNN of about Caduceus-PS's
parameter count. The Caduceus-PS rows with a k-mer stem (``patch_size`` s) run the
same blocks on ceil(L / s) tokens.

    python benchmarks/genomics_speed.py                       # L = 70, 101, 300; batch 32
    python benchmarks/genomics_speed.py --lengths 101 --rounds 7
    python benchmarks/genomics_speed.py --models "caduceus_ps (k-mer stem s=4)"
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from omniseq.backbones.cnn1d import DNACNN
from omniseq.backbones.dna import DNAModel


def caduceus_ps(dim: int, depth: int, d_state: int, expand: int, patch_size: int = 1,
                patch_kernel: int | None = None) -> DNAModel:
    return DNAModel(dim=dim, depth=depth, mixer="mamba", mixer_options={"d_state": d_state, "expand": expand},
                    rc_mode="ps", channel_mixer="none", norm="rmsnorm", patch_size=patch_size,
                    patch_kernel=patch_kernel)


MODELS = {
    "cnn (GUE benchmark)": lambda: DNACNN(dim=64, depth=3, kernel_size=9),
    "cnn (param-matched)": lambda: DNACNN(dim=128, depth=4, kernel_size=9),
    # The GUE recipe's size before issue 18 (dim 256, depth 4, N 16, expand 2).
    "caduceus_ps (old recipe size)": lambda: caduceus_ps(256, 4, 16, 2),
    # The CPU size of the recipes on one base per token: wider, expand 1 and N 8 put the
    # parameters in the projections, where a matmul spends them efficiently, not in the scan.
    "caduceus_ps (CPU size, 1 base/token)": lambda: caduceus_ps(448, 3, 8, 1),
    # The same blocks on k-mer tokens (patch_size s: a stride-s stem, ceil(L / s) tokens);
    # s = 6 is the recipes' CPU size now (genomics/gue_caduceus_ps).
    **{f"caduceus_ps (k-mer stem s={size})": (lambda size=size: caduceus_ps(448, 3, 8, 1, patch_size=size))
       for size in (2, 3, 4, 5, 6)},
    # Stem windows overlapping the neighbouring patches (patch_kernel = 2 s).
    "caduceus_ps (k-mer stem s=4, 8-base windows)": lambda: caduceus_ps(448, 3, 8, 1, 4, 8),
    "caduceus_ps (k-mer stem s=6, 12-base windows)": lambda: caduceus_ps(448, 3, 8, 1, 6, 12),
}
BASELINE = "cnn (GUE benchmark)"
MATCHED = "cnn (param-matched)"


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_step(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor):
    head = torch.nn.Linear(model.pooled_dim, 2)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(head(model.forward_pooled(ids)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def time_length(length: int, batch: int, rounds: int, seed: int, names: list[str]) -> list[dict]:
    """Median CPU and wall seconds per step of the named models at one length, alternating."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 9, (batch, length), generator=gen)  # A, C, G, T
    labels = torch.randint(0, 2, (batch,), generator=gen)
    torch.manual_seed(seed)
    models = {name: MODELS[name]() for name in names}
    steps = {name: make_step(model, ids, labels) for name, model in models.items()}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    wall: dict[str, list[float]] = {name: [] for name in models}
    for step in steps.values():  # warm-up: kernel builds, allocator
        step()
    for _ in range(rounds):
        for name, step in steps.items():
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    base = statistics.median(cpu[BASELINE])
    rows = []
    for name, model in models.items():
        med = statistics.median(cpu[name])
        rows.append({"length": length, "model": name, "params": num_params(model), "cpu_s": med,
                     "wall_s": statistics.median(wall[name]), "x_cnn": med / base})
    matched = next(r["cpu_s"] for r in rows if r["model"] == MATCHED)
    for row in rows:
        row["x_matched_cnn"] = row["cpu_s"] / matched
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[70, 101, 300])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="NAME",
                        help=f"models to time (both CNNs are always timed: they are the ratios' peers); from {list(MODELS)}")
    args = parser.parse_args()
    names = [BASELINE, MATCHED] + [name for name in args.models if name not in (BASELINE, MATCHED)]
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size}, {args.threads} torch thread(s), median of {args.rounds} alternating rounds; "
          "CPU s = process CPU time per training step")
    print("| L | model | params | CPU s/step | wall s/step | x GUE CNN | x param-matched CNN |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        for r in time_length(length, args.batch_size, args.rounds, args.seed, names):
            print(f"| {r['length']} | {r['model']} | {r['params'] / 1e6:.2f}M | {r['cpu_s']:.3f} | {r['wall_s']:.3f} "
                  f"| {r['x_cnn']:.1f} | {r['x_matched_cnn']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
