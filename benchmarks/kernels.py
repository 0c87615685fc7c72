"""CPU time and peak memory of each kernel's loop reference vs its fast form.

    python benchmarks/kernels.py                  # L in 256, 1024, 4096, 16384
    python benchmarks/kernels.py --lengths 256 1024 --ops gla
    python benchmarks/kernels.py --ops selective_scan --grad   # forward + backward

"fast" is the PyTorch form; ops with a compiled C kernel (``backend="cpu"``, the
default on CPU when a C compiler is present) get a "compiled" column measured in
the same run, with its speed-up over the PyTorch form.

Each (op, form, L) runs in a fresh subprocess so that peak RSS is its own; the
peak reported is the rise of the resident set above what the inputs already
held. Quadratic-memory references are skipped where they would not fit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

OPS = ("attention", "gla", "linear_scan", "selective_scan", "ssm_conv", "fft_conv")
# References whose loop is quadratic in L (time) are capped to keep the run short.
REFERENCE_MAX_LEN = {"attention": 4096, "fft_conv": 4096}


COMPILED_OPS = ("selective_scan",)


def make_case(op: str, length: int, grad: bool = False):
    """Inputs and (reference, fast[, compiled]) callables for one op at length L."""
    from omniseq import kernels as K

    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    if op == "attention":
        q, k, v = (rand(1, length, 4, 64) for _ in range(3))
        return (lambda: K.attention_reference(q, k, v, causal=True),
                lambda: K.attention(q, k, v, causal=True))
    if op == "gla":
        q, k, v = (rand(1, length, 4, 64) for _ in range(3))
        gate = torch.nn.functional.logsigmoid(rand(1, length, 4, 64)) / 16
        return (lambda: K.gated_linear_attention_recurrent(q, k, v, gate),
                lambda: K.gated_linear_attention(q, k, v, gate))
    if op == "linear_scan":
        a = torch.rand(2, length, 256, generator=g) * 0.2 + 0.8
        b = rand(2, length, 256)
        return lambda: K.linear_scan_reference(a, b), lambda: K.linear_scan(a, b)
    if op == "selective_scan":
        d, n = 256, 16
        u, delta = rand(1, length, d), rand(1, length, d)
        A = -torch.rand(d, n, generator=g) - 0.5
        B, C = rand(1, length, n), rand(1, length, n)
        kw = dict(delta_softplus=True)
        return (lambda: K.selective_scan_reference(u, delta, A, B, C, **kw),
                lambda: K.selective_scan(u, delta, A, B, C, **kw, backend="torch"),
                lambda: K.selective_scan(u, delta, A, B, C, **kw, backend="cpu"))
    if op == "ssm_conv":
        h, n = 256, 32
        log_dt = torch.rand(h, generator=g) * 4 - 7
        A = torch.complex(-0.5 * torch.ones(h, n), torch.pi * torch.arange(n).float().expand(h, n))
        C = torch.complex(rand(h, n), rand(h, n))
        return (lambda: K.ssm_conv_kernel_reference(log_dt, A, C, length),
                lambda: K.ssm_conv_kernel(log_dt, A, C, length))
    if op == "fft_conv":
        u, k = rand(1, length, 256), rand(256, length)
        return lambda: K.fft_conv_reference(u, k), lambda: K.fft_conv(u, k)
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


def current_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


FORMS = ("reference", "fast", "compiled")


def measure(op: str, form: str, length: int, repeats: int, grad: bool) -> dict:
    """Run in a child process: median seconds and peak extra memory (MiB)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    forward = make_case(op, length, grad)[FORMS.index(form)]
    fn = (lambda: forward().sum().backward()) if grad else forward
    before = current_rss_kib()
    with torch.set_grad_enabled(grad):
        fn()  # warm-up, and the peak-memory sample
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    times.sort()
    return {"seconds": times[len(times) // 2], "peak_mib": max(0, peak - before) / 1024}


def run_child(op: str, form: str, length: int, repeats: int, grad: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--child", op, form, str(length), str(repeats), str(int(grad))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grad", action="store_true", help="time forward + backward")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        op, form, length, repeats, grad = args.child
        print(json.dumps(measure(op, form, int(length), int(repeats), grad == "1")))
        return

    from rich.console import Console
    from rich.table import Table

    what = "forward + backward" if args.grad else "forward"
    table = Table(title=f"omniseq kernels on CPU, {what} ({torch.get_num_threads()} threads)")
    for col in ("op", "L", "reference s", "fast s", "speed-up", "compiled s", "compiled vs fast",
                "reference MiB", "fast MiB", "compiled MiB"):
        table.add_column(col, justify="right")
    fmt = lambda r, k, f: f.format(r[k]) if r else "skipped"  # noqa: E731
    ratio = lambda slow, quick: f"{slow['seconds'] / quick['seconds']:.1f}x" if slow and quick else "-"  # noqa: E731
    for op in args.ops:
        for length in args.lengths:
            fast = run_child(op, "fast", length, args.repeats, args.grad)
            compiled = run_child(op, "compiled", length, args.repeats, args.grad) if op in COMPILED_OPS else None
            ref = None
            if length <= REFERENCE_MAX_LEN.get(op, 1 << 30):
                ref = run_child(op, "reference", length, 1 if length > 1024 else args.repeats, args.grad)
            table.add_row(op, str(length), fmt(ref, "seconds", "{:.4f}"), fmt(fast, "seconds", "{:.4f}"),
                          ratio(ref, fast), fmt(compiled, "seconds", "{:.4f}"), ratio(fast, compiled),
                          fmt(ref, "peak_mib", "{:.1f}"), fmt(fast, "peak_mib", "{:.1f}"),
                          fmt(compiled, "peak_mib", "{:.1f}"))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
