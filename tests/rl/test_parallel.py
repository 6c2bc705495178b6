"""Data-parallel training: `torchrun --nproc_per_node 2 -m molma train` (gloo, CPU) with the same global
batch ends where the 1-process run ends (issue: 2-process run matches the 1-process run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.multiprocess import free_port, needs_gloo
from tests.rl import toy

REPO = Path(__file__).resolve().parents[2]

pytestmark = needs_gloo


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    # the toy policy answers with words, so both objectives carry signal from the first iteration (with a
    # random model "clean" would be constant and its whitened advantages pure rounding noise)
    model, tok = toy.toy_policy()
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in toy.PROMPTS))
    config = {
        "algo": "molma", "model": str(root / "tiny"),
        "objectives": {"long": "rule:length:cap=14", "clean": "rule:banned_words:words=bad"},
        "help_objective": "long", "safe_objective": "clean",
        "prompts": {"toy": str(root / "prompts.jsonl")}, "prompt_mix": {"toy": 1.0}, "heldout_fraction": 0.0,
        "iterations": 2, "experience_size": 8, "minibatch_size": 4, "max_new_tokens": 12, "lr": 1e-3,
        "critic_backbone": "trainable", "whiten_advantages": True, "seed": 3, "save_every": 0,
        "tensorboard": False, "progress": False,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    one, two = root / "one", root / "two"
    train = ["-m", "molma", "train", "--config", str(root / "config.yaml"), "--threads", "1"]
    _run([sys.executable, *train, "--out", str(one)], root)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(free_port()), *train, "--out", str(two)], root)
    return {"one": one, "two": two}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_sample_and_score_the_same_experience(runs):
    one, two = _metrics(runs["one"]), _metrics(runs["two"])
    assert [m["iteration"] for m in two] == [1, 2]  # process 0 alone writes the log
    for a, b in zip(one, two):
        assert a["sample"] == b["sample"]
        for key in ("reward/raw/long", "reward/raw/clean", "response_tokens"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        for key in ("kl", "loss/policy/long", "loss/value/clean", "grad/alpha/long", "grad/alpha/clean"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert json.loads((runs["two"] / "run.json").read_text())["processes"] == 2


def test_two_processes_end_with_the_parameters_of_one(runs):
    one = load_file(str(runs["one"] / "final" / "model.safetensors"))
    two = load_file(str(runs["two"] / "final" / "model.safetensors"))
    start = load_file(str(runs["one"].parent / "tiny" / "model.safetensors"))
    assert one.keys() == two.keys()
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert moved > 1e-4  # the runs did train
    assert worst < 1e-5, f"2-process parameters differ from 1-process by {worst} (moved {moved})"
    assert all(torch.isfinite(t).all() for t in two.values())
