"""Build a C source of this package into a shared library on first use, cached per machine.

Why ctypes and a plain C compiler rather than a torch C++ extension: the C files
include no torch headers, so a build takes under a second instead of a minute, and
any ``cc`` works. ctypes releases the GIL during a call, so callers can split work
over threads.

``-march=native`` makes the library machine-specific, so the cache key holds the
CPU's model and feature flags besides the source, the flags and this build script. Builds go to a
temporary name and are renamed into place, so concurrent processes (pytest-xdist
workers, DDP ranks) never load a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV_SWITCH = "OMNISEQ_CPU_KERNELS"
ENV_CACHE = "OMNISEQ_CACHE_DIR"
_SOURCES = Path(__file__).parent
# -ffast-math lets GCC call glibc's vector expf (libmvec); the kernels do no
# comparisons, so the finite-math assumption changes no result they compute.
_FLAG_SETS = (
    ["-O3", "-ffast-math", "-march=native"],
    ["-O3", "-ffast-math"],
    ["-O3"],
)


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return platform.machine() + "\n".join(sorted(set(wanted)))


def _cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "omniseq" / "cpu_kernels"


def _run(cmd: list[str]) -> str | None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    return None if result.returncode == 0 else f"{' '.join(cmd)}: {result.stderr.strip()[-400:]}"


def _compile(source: Path, target: Path, compiler: str) -> str | None:
    """Try the flag sets from fastest to plainest; returns None on success, else the last error.

    Compiling and linking are separate steps: linking with -ffast-math would pull in
    crtfastmath.o, which switches the whole process to flush-to-zero on load.
    """
    error = "no flag set tried"
    for flags in _FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            obj, lib = Path(scratch) / "kernel.o", Path(scratch) / "kernel.so"
            error = _run([compiler, *flags, "-fPIC", "-c", "-o", str(obj), str(source)]) or _run(
                [compiler, "-shared", "-o", str(lib), str(obj), "-lm"]
            )
            if error is None:
                os.replace(lib, target)
                return None
    return error


@functools.cache
def _load(name: str) -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return None, f"disabled by {ENV_SWITCH}=0"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler found (set CC, or install gcc)"
    source = _SOURCES / f"{name}.c"
    key = hashlib.sha256(
        source.read_bytes()
        + b"".join(header.read_bytes() for header in sorted(_SOURCES.glob("*.h")))  # included by sources
        + Path(__file__).read_bytes()  # a change to how we build invalidates old builds
        + repr(_FLAG_SETS).encode()
        + compiler.encode()
        + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            error = _compile(source, target, compiler)
            if error is not None:
                return None, f"compiling {source.name} failed: {error}"
        return ctypes.CDLL(str(target)), ""
    except OSError as exc:
        return None, f"building or loading {target} failed: {exc}"


def load_cpu_library(name: str) -> ctypes.CDLL:
    """The compiled library for ``omniseq/kernels/cpu/<name>.c``; RuntimeError saying why if none."""
    library, reason = _load(name)
    if library is None:
        raise RuntimeError(f"the compiled CPU kernel {name!r} is unavailable: {reason}")
    return library


def cpu_kernels_available(name: str = "selective_scan") -> bool:
    return _load(name)[0] is not None
