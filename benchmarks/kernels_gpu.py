"""GPU speed of omniseq's Triton kernels against PyTorch forms and peers.

Prints forward and forward+backward times (median, ms) for
- GLA: ours (Triton) vs omniseq torch chunked vs flash-linear-attention
  ``chunk_gla`` (if installed) vs causal SDPA attention, bf16;
- selective scan: ours (Triton) vs omniseq torch chunked vs the step loop.

Usage: ``PYTHONPATH=. python benchmarks/kernels_gpu.py [--quick] [--sections gla scan vision]``.
The vision section times one training step of Vim-T and ViG-T against DeiT-T.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton.testing

from omniseq.kernels.gla import gated_linear_attention
from omniseq.kernels.selective_scan import selective_scan, selective_scan_reference
from omniseq.kernels.triton import gated_linear_attention_triton, selective_scan_triton

GLA_SHAPES = [(8, 1024, 8, 64), (4, 4096, 16, 64), (1, 16384, 16, 64)]


def _time_ms(fn: Callable[[], object], slow: bool) -> float:
    if not slow:
        return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _fwd_bwd(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for x in inputs:
            x.grad = None
        forward().float().sum().backward()

    return run


def _measure(name: str, forward: Callable[[], torch.Tensor], inputs, slow: bool = False):
    try:
        with torch.no_grad():
            fwd = _time_ms(forward, slow)
        both = _time_ms(_fwd_bwd(forward, inputs), slow)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return name, float("nan"), float("nan")
    return name, fwd, both


def _gla_methods(batch: int, length: int, heads: int, dim: int):
    dev, dt = "cuda", torch.bfloat16
    q, k, v = (
        torch.randn(batch, length, heads, dim, device=dev, dtype=dt, requires_grad=True)
        for _ in range(3)
    )
    g = (
        (F.logsigmoid(torch.randn(batch, length, heads, dim, device=dev)) / 16)
        .to(dt)
        .requires_grad_()
    )
    qkvg = [q, k, v, g]
    methods = [
        ("omniseq triton", lambda: gated_linear_attention_triton(q, k, v, g)[0], qkvg),
        (
            "omniseq torch chunked",
            lambda: gated_linear_attention(q, k, v, g, backend="torch")[0],
            qkvg,
        ),
    ]
    try:
        from fla.ops.gla import chunk_gla

        methods.append(("fla chunk_gla", lambda: chunk_gla(q, k, v, g)[0], qkvg))
    except Exception as error:  # noqa: BLE001 - report any import failure and go on
        print(f"fla chunk_gla unavailable: {type(error).__name__}: {error}")
    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    methods.append(
        (
            "torch SDPA causal",
            lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True),
            [qt, kt, vt],
        )
    )
    return methods


def _scan_methods(batch: int, length: int, channels: int, n_state: int):
    dev = "cuda"
    u = torch.randn(batch, length, channels, device=dev, requires_grad=True)
    delta = (torch.randn(batch, length, channels, device=dev) - 2).requires_grad_()
    A = (-torch.rand(channels, n_state, device=dev) * 4).requires_grad_()
    B, C = (torch.randn(batch, length, n_state, device=dev, requires_grad=True) for _ in range(2))
    D = torch.randn(channels, device=dev, requires_grad=True)
    z = torch.randn(batch, length, channels, device=dev, requires_grad=True)
    args = (u, delta, A, B, C, D, z)
    inputs = list(args)
    kw = dict(delta_softplus=True)
    return [
        ("omniseq triton", lambda: selective_scan_triton(*args, **kw), inputs, False),
        (
            "omniseq torch chunked",
            lambda: selective_scan(*args, **kw, backend="torch"),
            inputs,
            False,
        ),
        (
            "torch step loop (reference)",
            lambda: selective_scan_reference(*args, **kw),
            inputs,
            True,
        ),
    ]


def _table(title: str, rows: list[tuple[str, str, float, float]]) -> None:
    print(f"\n{title}")
    print("| shape | method | fwd ms | fwd+bwd ms | fwd+bwd vs omniseq triton |")
    print("| --- | --- | ---: | ---: | ---: |")
    ours = {shape: both for shape, name, _, both in rows if name == "omniseq triton"}
    for shape, name, fwd, both in rows:
        ratio = both / ours[shape] if shape in ours else float("nan")
        print(f"| {shape} | {name} | {fwd:.3f} | {both:.3f} | {ratio:.2f}x |")


VISION_MODELS = ("deit_tiny_patch16_224", "vim_tiny_patch16_224", "vig_tiny_patch16_224")


def vision_train_step_ms(name: str, batch: int, image: int = 224) -> float:
    """Median ms of one AdamW training step (bf16 autocast) at ``image`` x ``image``."""
    import timm

    import omniseq  # noqa: F401  registers vim_* / vig_* in timm

    model = timm.create_model(name, num_classes=1000).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, image, image, device="cuda")
    target = torch.randint(0, 1000, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ms = triton.testing.do_bench(step, warmup=5, rep=100, return_mode="median")
    model = optimizer = None  # drop the closure's references before emptying the cache
    torch.cuda.empty_cache()
    return ms


def vision_table(batch: int) -> None:
    print(f"\nVision training step, batch {batch}, 224x224, bf16 autocast, AdamW (median ms)")
    print("| model | step ms | img/s | vs deit_tiny (timm) |")
    print("| --- | ---: | ---: | ---: |")
    times = {name: vision_train_step_ms(name, batch) for name in VISION_MODELS}
    base = times[VISION_MODELS[0]]
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} | {batch / ms * 1e3:.0f} | {ms / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="first GLA shape only")
    parser.add_argument("--sections", nargs="+", default=["gla", "scan", "vision"],
                        choices=["gla", "scan", "vision"])
    parser.add_argument("--gla-shapes", type=int, nargs="+", help="indices into GLA_SHAPES")
    parser.add_argument("--vision-batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}"
    )
    if "vision" in args.sections:
        vision_table(args.vision_batch)
    shapes = [GLA_SHAPES[i] for i in args.gla_shapes] if args.gla_shapes else GLA_SHAPES
    rows = []
    for shape in (shapes[:1] if args.quick else shapes) if "gla" in args.sections else []:
        for name, forward, inputs in _gla_methods(*shape):
            rows.append((str(shape), *_measure(name, forward, inputs)))
        torch.cuda.empty_cache()
    if rows:
        _table("GLA, bf16, (B, L, H, K=V), times in ms (median)", rows)
    if "scan" not in args.sections:
        return
    rows = []
    shape = (2, 4096, 1536, 16)
    for name, forward, inputs, slow in _scan_methods(*shape):
        rows.append((str(shape), *_measure(name, forward, inputs, slow)))
    _table("Selective scan, fp32, (B, L, D, N), softplus + D + z, times in ms", rows)


if __name__ == "__main__":
    main()
