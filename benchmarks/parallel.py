"""One process vs two (data parallel, FSDP2 with the policy gathered for generation, FSDP2 block by
block) on the embedded SmolLM2-135M with LoRA: seconds per iteration by phase, the weights each
process holds, and how far each layout's final adapter is from the 1-process run's.

Every layout runs through `molma train` (torchrun with gloo for two processes) with the same config:
MOLMA, rule objectives (`length`, `banned_words`, so no reward model is timed), 1 torch thread per
process. Runs go one after another (two processes already use both cores of a 2-core machine). The
first iteration is a warm-up and not timed.

    .venv/bin/python benchmarks/parallel.py [--iterations 4] [--experience 16] [--minibatch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

LAYOUTS = {  # name: (processes, extra overrides)
    "one-process": (1, []),
    "data-parallel-2": (2, []),
    "fsdp-2": (2, ["fsdp=true"]),
    "fsdp-2-block-by-block": (2, ["fsdp=true", "fsdp_gather_for_generation=false"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--experience", type=int, default=16)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/parallel.json")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = {"algo": "molma", "objectives": {"help": "rule:length", "safe": "rule:banned_words"},
                  "iterations": args.iterations, "experience_size": args.experience,
                  "minibatch_size": args.minibatch, "max_new_tokens": args.max_new_tokens, "lr": 1e-3,
                  "whiten_advantages": True, "lora": {"r": 8, "alpha": 16}, "critic_backbone": "frozen",
                  "save_every": 0, "report_to": "none", "progress": False}
        Path(tmp, "config.yaml").write_text(yaml.safe_dump(config))
        for name, (processes, overrides) in LAYOUTS.items():
            out = Path(tmp, name)
            cmd = ["-m", "molma", "train", "--config", str(Path(tmp, "config.yaml")), "--threads", "1",
                   "--out", str(out), *overrides]
            if processes > 1:
                cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *cmd]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
            held = re.search(r"holds (\d+) of (\d+) MB", proc.stderr)
            results[name] = {
                "processes": processes,
                "seconds_per_iteration": {k.split("/", 1)[1]: round(statistics.median(x[k] for x in rows), 3)
                                          for k in rows[0] if k.startswith("time/")},
                "wall_s": round(wall, 1),
                "weights_mb_per_process": None if held is None else {"held": int(held[1]),
                                                                     "whole": int(held[2])},
                "adapter": load_file(str(out / "final" / "adapter_model.safetensors")),
            }
            print(name, json.dumps(results[name]["seconds_per_iteration"]), flush=True)
    base = results["one-process"]["adapter"]
    for res in results.values():
        mine = res.pop("adapter")
        res["max_abs_diff_to_one_process"] = max((mine[k] - base[k]).abs().max().item() for k in base)
    one = results["one-process"]["seconds_per_iteration"]["total"]
    for res in results.values():
        res["speedup_vs_one_process"] = round(one / res["seconds_per_iteration"]["total"], 2)
    out = {"results": results, "settings": vars(args), "python": platform.python_version(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
