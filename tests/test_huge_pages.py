"""``import omniseq`` before torch puts large CPU tensors on transparent huge pages (2 MB),
and ``THP_MEM_ALLOC_ENABLE=0`` keeps torch's default (4 KB pages unless the system forces THP);
it also shortens OpenMP's spin-wait (``GOMP_SPINCOUNT``) unless the user set one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str | None:
    """The system's THP mode (``always``, ``madvise`` or ``never``), None where there is none."""
    try:
        match = re.search(r"\[(\w+)\]", THP_MODE_FILE.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


# Touch 256 MB of tensors and read how much of the process's anonymous memory is on huge pages.
PROBE = """
import omniseq, torch
tensors = [torch.ones(64 << 20, dtype=torch.uint8) for _ in range(4)]
rollup = open("/proc/self/smaps_rollup").read()
print(int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("AnonHugePages:"))))
"""


def _huge_page_kb(**env_changes: str | None) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


@pytest.mark.skipif(_thp_mode() in (None, "never"), reason="this system has transparent huge pages off")
def test_large_tensors_are_on_huge_pages_by_default():
    assert _huge_page_kb(THP_MEM_ALLOC_ENABLE=None) >= 128 * 1024  # at least half of the 256 MB


@pytest.mark.skipif(_thp_mode() != "madvise", reason="only under THP 'madvise' does the switch decide")
def test_the_user_can_turn_huge_pages_off():
    assert _huge_page_kb(THP_MEM_ALLOC_ENABLE="0") == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp's switch: Linux only")
def test_openmp_spin_wait_is_shortened_unless_the_user_chose_one():
    probe = "import omniseq, os; print(os.environ['GOMP_SPINCOUNT'])"
    for given, expected in ((None, "10000"), ("300000", "300000")):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("GOMP_SPINCOUNT", None)
        if given is not None:
            env["GOMP_SPINCOUNT"] = given
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr
