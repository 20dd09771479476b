"""How long the ``deepsad`` command takes to answer without doing work: ``--help`` of the app and of a few
commands, and a usage error — the latency a user feels on every typo. Medians over repeats, the machine
printed. (The unit suite only checks what keeps this low: no torch or ray import for --help.)

    python benchmarks/bench_cli.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "deepsad --help": ["--help"],
    "deepsad sweep submit --help": ["sweep", "submit", "--help"],
    "deepsad train --help": ["train", "--help"],
    "deepsad frobnicate (usage error)": ["frobnicate"],
}


def machine() -> str:
    return f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("deepsad", path=str(Path(sys.executable).parent)) or shutil.which("deepsad")
    if exe is None:
        sys.exit("no `deepsad` command: install the project first (make setup)")
    print(f"machine: {machine()}")
    print(f"command: {exe}")
    for label, argv in CASES.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([exe, *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - t0)
        print(f"{label:<36} median {statistics.median(times) * 1000:7.0f} ms  (min {min(times) * 1000:.0f}, "
              f"max {max(times) * 1000:.0f}, n={len(times)})")


if __name__ == "__main__":
    main()
