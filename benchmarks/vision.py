"""Forward throughput (img/s) and peak memory of Vim-T, ViG-T and Swin-T against
timm's deit_tiny at 224, 512 and 1024 pixels, with ratios to DeiT-T.

    OMP_NUM_THREADS=1 python benchmarks/vision.py                      # full protocol, CPU
    python benchmarks/vision.py --repeats 1 --warmup 0 --sizes 224 512  # reduced
    python benchmarks/vision.py --device cuda --dtype bfloat16
    python benchmarks/vision.py --paired ViG-T --sizes 1024 --threads 1 2 --repeats 7

``--paired`` measures one model against DeiT-T in the same process, alternating
their forwards (DeiT, model, DeiT, model, ...) so that a shared, loaded machine
slows both alike; it prints the median img/s of each and the median of the
per-round speed ratios, per thread count.

Each (model, size) runs in a fresh subprocess so that CPU peak memory (the rise
of the process's max RSS during the timed forwards over the RSS after building
the model) is not polluted by earlier runs; on CUDA it is
``torch.cuda.max_memory_allocated`` minus the memory held before the forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {
    "deit_tiny (timm)": "deit_tiny_patch16_224",
    "Vim-T": "vim_tiny_patch16_224",
    "ViG-T": "vig_tiny_patch16_224",
    "Swin-T": "omni_swin_tiny_patch4_window7_224",
}
REFERENCE = "deit_tiny (timm)"


def measure(model_name: str, size: int, batch: int, repeats: int, warmup: int, device: str, dtype: str) -> dict:
    import resource

    import timm
    import torch

    import omniseq  # noqa: F401  registers the models

    torch.manual_seed(0)
    model = timm.create_model(model_name, img_size=size, num_classes=1000).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype), enabled=dtype != "float32")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad(), autocast:
        for _ in range(warmup):
            model(x)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        sync()
        elapsed = time.perf_counter() - start
    if device.startswith("cuda"):
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"img_per_s": batch * repeats / elapsed, "peak_mb": peak_mb, "seconds_per_batch": elapsed / repeats}


def measure_paired(model_name: str, size: int, batch: int, repeats: int, warmup: int, threads: int) -> dict:
    """Alternate DeiT-T and ``model_name`` forwards on CPU; medians over ``repeats`` rounds."""
    import timm
    import torch

    import omniseq  # noqa: F401  registers the models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {
        "reference": timm.create_model(MODELS[REFERENCE], img_size=size).eval(),
        "model": timm.create_model(model_name, img_size=size).eval(),
    }
    x = torch.randn(batch, 3, size, size)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                seconds[name].append(time.perf_counter() - start)
    ratios = [r / m for r, m in zip(seconds["reference"], seconds["model"], strict=True)]
    return {
        "reference_img_per_s": batch / statistics.median(seconds["reference"]),
        "model_img_per_s": batch / statistics.median(seconds["model"]),
        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
    }


def run_paired(args) -> None:
    print(f"paired against {REFERENCE}, CPU, batch={args.batch} repeats={args.repeats} warmup={args.warmup}")
    print(f"{'model':8s} {'threads':>7s} {'size':>5s} {'DeiT-T img/s':>13s} {'model img/s':>12s} "
          f"{'x DeiT-T (median)':>18s} {'min':>6s} {'max':>6s}")
    for threads in args.threads:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--_paired_child", MODELS[args.paired], str(size), str(threads),
                   "--batch", str(args.batch), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if out.returncode != 0:
                print(f"{args.paired:8s} {threads:7d} {size:5d}  failed: {out.stderr.strip()[-300:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{args.paired:8s} {threads:7d} {size:5d} {r['reference_img_per_s']:13.3f} "
                  f"{r['model_img_per_s']:12.3f} {r['median_ratio']:18.2f} {r['min_ratio']:6.2f} "
                  f"{r['max_ratio']:6.2f}", flush=True)


def run_one(args, name: str, size: int) -> dict:
    cmd = [sys.executable, __file__, "--_child", MODELS[name], str(size), "--batch", str(args.batch),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--paired", choices=[m for m in MODELS if m != REFERENCE],
                        help="time this model against DeiT-T in one process, alternating (CPU)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts for --paired")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_paired_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._paired_child:
        name, size, threads = args._paired_child
        print(json.dumps(measure_paired(name, int(size), args.batch, args.repeats, args.warmup, int(threads))))
        return
    if args.paired:
        run_paired(args)
        return
    if args._child:
        result = measure(args._child[0], int(args._child[1]), args.batch, args.repeats, args.warmup, args.device, args.dtype)
        print(json.dumps(result))
        return
    models = [REFERENCE] + [m for m in args.models if m != REFERENCE]
    results: dict[str, dict[int, dict]] = {}
    print(f"device={args.device} dtype={args.dtype} batch={args.batch} repeats={args.repeats} warmup={args.warmup}")
    print(f"{'model':18s} {'size':>5s} {'img/s':>9s} {'peak MB':>9s} {'x DeiT-T speed':>15s} {'x DeiT-T mem':>13s}")
    for size in args.sizes:
        for name in models:
            r = results.setdefault(name, {})[size] = run_one(args, name, size)
            ref = results[REFERENCE].get(size, {})
            if "error" in r:
                print(f"{name:18s} {size:5d}  failed: {r['error']}")
                continue
            speed = r["img_per_s"] / ref["img_per_s"] if "img_per_s" in ref else float("nan")
            mem = r["peak_mb"] / ref["peak_mb"] if ref.get("peak_mb") else float("nan")
            print(f"{name:18s} {size:5d} {r['img_per_s']:9.3f} {r['peak_mb']:9.1f} {speed:15.2f} {mem:13.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
