"""Multi-process training: `torchrun --nproc_per_node 2 -m molma train` (gloo, CPU) with the same global
batch ends where the 1-process run ends (issue: 2-process run matches the 1-process run), replicated
(data parallel) or sharded (`fsdp=true`, FSDP2), and checkpoints resume across layouts."""

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
        "report_to": "none", "progress": False,
        # float32: these tests compare processes to 1e-5; bf16 autocast rounds differently per batch split
        "precision": "fp32",
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    runs: dict[str, Path] = {}

    def train(name: str, processes: int, *overrides: str, resume: bool = False) -> None:
        runs[name] = root / name
        cmd = ["-m", "molma", "train", "--config", str(root / "config.yaml"), "--threads", "1",
               "--out", str(root / name), *overrides, *(["--resume"] if resume else [])]
        if processes > 1:
            cmd = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
                   "127.0.0.1", "--master_port", str(free_port()), *cmd]
        _run([sys.executable, *cmd], root)

    train("one", 1)
    train("two", 2)
    train("fsdp", 2, "fsdp=true", "save_every=1")
    # LoRA adapters on a sharded base model, the representation-level ("fast") Gramian, frozen critic
    lora = ("lora={r: 4}", "gradient_mode=fast", "critic_backbone=frozen")
    train("lora-one", 1, *lora)
    train("lora-fsdp", 2, *lora, "fsdp=true")
    # GAPO (PPO) with the last layer's LoRA adapters as the Gramian source: they stay whole on every process
    gapo = ("algo=gapo", "gradient_mode=subset", "lora={r: 4}")
    train("gapo-one", 1, *gapo)
    train("gapo-fsdp", 2, *gapo, "fsdp=true")
    train("so-one", 1, "algo=so-weighted")
    # block-by-block generation (synced decoding) instead of gathering the policy first
    train("so-fsdp", 2, "algo=so-weighted", "fsdp=true", "fsdp_gather_for_generation=false")
    # critic-free: K GRPO losses (groups of 4 responses per prompt, split over the processes), no critic
    train("grpo-one", 1, "algo=molma-grpo", "kl_beta=0.1")
    train("grpo-fsdp", 2, "algo=molma-grpo", "kl_beta=0.1", "fsdp=true")
    # killed after iteration 1, resumed: sharded -> sharded, sharded -> 1 process, 1 process -> sharded
    train("resume-fsdp", 2, "fsdp=true", "iterations=1", "save_every=1")
    train("resume-fsdp", 2, "fsdp=true", resume=True)
    train("resume-to-one", 2, "fsdp=true", "iterations=1", "save_every=1")
    train("resume-to-one", 1, resume=True)
    train("resume-to-fsdp", 1, "iterations=1", "save_every=1")
    train("resume-to-fsdp", 2, "fsdp=true", resume=True)
    return runs


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


def _final(run: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (run / "final" / "adapter_model.safetensors").exists() else \
        "model.safetensors"
    return load_file(str(run / "final" / name))


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(("one", "two"), [("one", "two"), ("one", "fsdp"), ("lora-one", "lora-fsdp"),
                                          ("gapo-one", "gapo-fsdp"), ("so-one", "so-fsdp"),
                                          ("grpo-one", "grpo-fsdp")])
def test_two_processes_end_with_the_parameters_of_one(runs, one, two):
    a, b = _final(runs[one]), _final(runs[two])
    if "lora_B" in " ".join(a):  # LoRA B starts at zero: the adapter moved if B is non-zero
        moved = max(v.abs().max().item() for k, v in a.items() if "lora_B" in k)
    else:
        moved = _worst(a, load_file(str(runs["one"].parent / "tiny" / "model.safetensors")))
    worst = _worst(a, b)
    assert moved > 1e-4  # the runs did train
    assert worst < 1e-5, f"2-process parameters differ from 1-process by {worst} (moved {moved})"
    assert all(torch.isfinite(t).all() for t in b.values())


@pytest.mark.parametrize("run", ["fsdp", "lora-fsdp", "gapo-fsdp", "so-fsdp", "grpo-fsdp"])
def test_fsdp_runs_were_sharded_and_match_the_logged_losses(runs, run):
    summary = json.loads((runs[run] / "run.json").read_text())
    assert summary["processes"] == 2 and summary["fsdp"] is True
    one = _metrics(runs[run.replace("fsdp", "one")])
    for a, b in zip(one, _metrics(runs[run])):
        assert a["sample"] == b["sample"]
        for key in a:
            if key.startswith(("loss/", "grad/alpha", "reward/")):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_fsdp_checkpoints_hold_whole_tensors(runs):
    ckpt = runs["fsdp"] / "checkpoints" / "iter-000001"
    assert json.loads((ckpt / "meta.json").read_text())["fsdp"] is True
    policy = load_file(str(ckpt / "policy.safetensors"))
    start = load_file(str(runs["one"].parent / "tiny" / "model.safetensors"))
    assert {k: v.shape for k, v in start.items()} == {k: v.shape for k, v in policy.items()}
    state = torch.load(ckpt / "state.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["params"][0] == "policy.model.embed_tokens.weight"  # keyed by name
    assert state["state"]["policy.model.embed_tokens.weight"]["exp_avg"].shape == \
        start["model.embed_tokens.weight"].shape


@pytest.mark.parametrize(("resumed", "uninterrupted", "tolerance"), [
    ("resume-fsdp", "fsdp", 1e-6), ("resume-to-one", "one", 1e-5), ("resume-to-fsdp", "fsdp", 1e-5)])
def test_a_killed_run_resumes_with_any_layout(runs, resumed, uninterrupted, tolerance):
    assert [m["iteration"] for m in _metrics(runs[resumed])] == [1, 2]
    worst = _worst(_final(runs[resumed]), _final(runs[uninterrupted]))
    assert worst < tolerance, f"{resumed} ends {worst} away from {uninterrupted}"
