"""Start-up time of the ``omniseq`` command and of ``import omniseq`` (target: under 1.5 s).

Each command runs ``--repeats`` times in a fresh interpreter; the median wall time is
printed with whether torch got imported. Compare with ``import torch`` on the same machine.

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = "; import sys; print('torch' in sys.modules)"
COMMANDS = {
    "omniseq --help": "from omniseq.recipes.launcher import main; main(['--help'])" + CHECK,
    "omniseq list": "from omniseq.recipes.launcher import main; main(['list'])" + CHECK,
    "import omniseq": "import omniseq" + CHECK,
    "import torch (for scale)": "import torch" + CHECK,
    "import omniseq, timm (registers models)": "import omniseq, timm" + CHECK,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print("| command | median wall s | torch imported |")
    print("|---|---:|---|")
    for name, code in COMMANDS.items():
        times, imported = [], ""
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            times.append(time.perf_counter() - start)
            imported = out.stdout.strip().splitlines()[-1]
        print(f"| {name} | {statistics.median(times):.2f} | {imported} |", flush=True)


if __name__ == "__main__":
    main()
