"""Peak resident memory and wall time of a command, its worker processes included.

``make demo`` and ``molma experiment`` train in spawned worker processes, so the peak of one process (what
``/usr/bin/time -v`` reports) understates what the machine needs: this samples the resident set size of the
whole process tree (psutil) every ``--interval`` seconds and records the largest sum. Writes a JSON record.

    .venv/bin/python benchmarks/peak_memory.py --out benchmarks/results/demo_memory.json -- make demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

from molma.environment import read_cpuinfo

GIB = 1024**3


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and every live descendant (processes that end while being read count 0)."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--target-gib", type=float, default=8.0, help="peak the record is checked against")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    t0 = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak, samples = 0, 0
    timeline: list[list[float]] = []  # [seconds, GiB, processes] every ~10 s: which stage holds the peak
    while child.poll() is None:
        rss = tree_rss(root)
        peak = max(peak, rss)
        samples += 1
        now = time.perf_counter() - t0
        if not timeline or now - timeline[-1][0] >= 10.0:
            with contextlib.suppress(psutil.NoSuchProcess):
                timeline.append([round(now, 1), round(rss / GIB, 2), 1 + len(root.children(recursive=True))])
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    record = {"benchmark": "peak resident memory of a command's process tree (sampled)",
              "command": " ".join(command), "exit_code": child.returncode, "wall_s": round(wall, 1),
              "peak_rss_gib": round(peak / GIB, 2), "samples": samples, "interval_s": args.interval,
              "target_gib": args.target_gib, "within_target": peak / GIB <= args.target_gib,
              "timeline_s_gib_processes": timeline,
              "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
                          "platform": platform.platform(), "python": platform.python_version(),
                          **read_cpuinfo()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
