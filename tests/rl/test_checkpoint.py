"""Checkpoints carry checksums; --resume uses the newest intact one, warns about damaged ones (naming
the file) and is an error, saying what it found, when none is usable (issue 16)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from molma.rl.checkpoint import (
    CHECKSUMS,
    CheckpointError,
    checkpoint_problem,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def _save(root: Path, iteration: int) -> Path:
    torch.manual_seed(iteration)
    tensors = {"policy": {"w": torch.randn(64, 32), "b": torch.randn(32)}, "critic": {"v": torch.randn(32)}}
    optimizer = {"state": {"w": {"exp_avg": torch.randn(64, 32)}}, "param_groups": [{"lr": 1e-3, "params": ["w"]}]}
    return save_checkpoint(root, iteration, tensors, optimizer, {"algo": "molma"})


def _three(tmp_path: Path) -> Path:
    root = tmp_path / "checkpoints"
    for it in (1, 2, 3):
        _save(root, it)
        prune_checkpoints(root, keep=2)
    assert sorted(p.name for p in root.glob("iter-*")) == ["iter-000002", "iter-000003"]
    return root


def _flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_checkpoints_carry_sha256sums_of_every_file(tmp_path):
    path = _save(tmp_path, 1)
    lines = (path / CHECKSUMS).read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ")
        listed[name] = digest
    assert set(listed) == {"policy.safetensors", "critic.safetensors", "state.pt", "meta.json"}
    for name, digest in listed.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert checkpoint_problem(path) is None
    assert latest_checkpoint(tmp_path, required=True) == path


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "deleted"])
@pytest.mark.parametrize("file", ["policy.safetensors", "critic.safetensors", "state.pt", "meta.json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, caplog, file, damage):
    root = _three(tmp_path)
    target = root / "iter-000003" / file
    {"bit flip": lambda p: _flip_byte(p, min(100, p.stat().st_size // 2)), "truncated": _truncate,
     "deleted": Path.unlink}[damage](target)
    with caplog.at_level(logging.WARNING, logger="molma.rl.checkpoint"):
        path = latest_checkpoint(root, required=True)
    assert path == root / "iter-000002"
    assert str(target) in caplog.text and "iter-000002" in caplog.text
    _, _, meta = load_checkpoint(path, ["policy", "critic"])
    assert meta["iteration"] == 2


def test_a_bit_flip_inside_tensor_data_is_caught(tmp_path):
    path = _save(tmp_path, 1)
    _flip_byte(path / "policy.safetensors", 4)  # in the last tensor's data: the file still loads
    load_checkpoint(path, ["policy", "critic"])
    assert "policy.safetensors does not match its SHA256 checksum" in checkpoint_problem(path)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*policy\.safetensors does not match"):
        latest_checkpoint(tmp_path, required=True)


def test_a_broken_latest_pointer_or_missing_meta_falls_back(tmp_path, caplog):
    root = _three(tmp_path)
    (root / "latest").write_text("iter-000012")  # names a folder that does not exist
    with caplog.at_level(logging.WARNING, logger="molma.rl.checkpoint"):
        assert latest_checkpoint(root, required=True) == root / "iter-000003"
    assert "iter-000012 does not exist" in caplog.text
    (root / "latest").write_bytes(b"\x00\xff garbage")
    assert latest_checkpoint(root, required=True) == root / "iter-000003"
    (root / "iter-000003" / "meta.json").unlink()
    assert latest_checkpoint(root, required=True) == root / "iter-000002"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, r"checkpoints does not exist"),
        (lambda root: root.mkdir(), r"checkpoints holds no checkpoint"),
        (lambda root: (_save(root, 4), _truncate(root / "iter-000004" / "state.pt")),
         r"iter-000004/state\.pt does not match its SHA256 checksum"),
        (lambda root: (_save(root, 4), (root / "iter-000004" / "meta.json").unlink()),
         r"iter-000004/meta\.json is missing"),
    ],
    ids=["no folder", "empty folder", "only a truncated one", "meta.json missing"],
)
def test_no_usable_checkpoint_is_an_error_that_says_what_it_found(tmp_path, setup, message):
    root = tmp_path / "checkpoints"
    setup(root)
    assert latest_checkpoint(root) is None
    with pytest.raises(CheckpointError, match=rf"no usable checkpoint to resume from: .*{message}"):
        latest_checkpoint(root, required=True)


@pytest.mark.parametrize("file", ["policy.safetensors", "state.pt", "meta.json"])
def test_truncated_files_give_errors_naming_the_path(tmp_path, file):
    path = _save(tmp_path, 1)
    _truncate(path / file)
    with pytest.raises(CheckpointError, match=rf"{path / file} cannot be read"):
        load_checkpoint(path, ["policy", "critic"])


def test_checkpoints_without_checksums_are_checked_by_their_formats(tmp_path, caplog):
    """Checkpoints written before checksums existed still resume; damage is still caught."""
    root = _three(tmp_path)
    for folder in root.glob("iter-*"):
        (folder / CHECKSUMS).unlink()
    assert latest_checkpoint(root, required=True) == root / "iter-000003"
    _truncate(root / "iter-000003" / "policy.safetensors")
    with caplog.at_level(logging.WARNING, logger="molma.rl.checkpoint"):
        assert latest_checkpoint(root, required=True) == root / "iter-000002"
    assert "iter-000003/policy.safetensors is damaged or truncated" in caplog.text
    _truncate(root / "iter-000002" / "state.pt")
    with pytest.raises(CheckpointError, match=r"iter-000002/state\.pt is damaged"):
        latest_checkpoint(root, required=True)


# ------------------------------------------------------------------------------- through the trainer
@pytest.fixture(scope="module")
def policy():
    from tests.rl import toy

    return toy.toy_policy()


def _trainer(policy, out: Path, **kw):
    from molma.rl import MultiObjectiveTrainer, TrainConfig
    from tests.rl import toy

    model, tok = policy
    cfg = TrainConfig(algo="molma", objectives={"long": "rule:length", "clean": "rule:banned_words"},
                      help_objective="long", safe_objective="clean", experience_size=8, minibatch_size=4,
                      max_new_tokens=8, prompt_mix={"help": 0.5, "safe": 0.5}, out=str(out), report_to="none",
                      progress=False, seed=1, **kw)
    return MultiObjectiveTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, objectives=toy.objectives(),
                                 prompt_pools=toy.pools())


def _iterations(out: Path) -> list[int]:
    return [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_before_the_first_checkpoint_is_an_error_and_keeps_the_metrics(policy, tmp_path):
    """save_every=10, killed after 2 iterations: nothing to resume from; the old metrics stay as they are."""
    out = tmp_path / "run"
    _trainer(policy, out, iterations=2, save_every=0).train()
    before = (out / "metrics.jsonl").read_text()
    assert _iterations(out) == [1, 2]
    with pytest.raises(CheckpointError, match=r"no usable checkpoint to resume from: .*checkpoints does not exist"):
        _trainer(policy, out, iterations=20, save_every=10).train(resume=True)
    assert (out / "metrics.jsonl").read_text() == before


def test_resume_from_a_damaged_latest_uses_the_previous_one(policy, tmp_path, caplog):
    out = tmp_path / "run"
    _trainer(policy, out, iterations=3, save_every=1).train()
    _flip_byte(out / "checkpoints" / "iter-000003" / "policy.safetensors", 8)
    resumed = _trainer(policy, out, iterations=3, save_every=1)
    with caplog.at_level(logging.WARNING, logger="molma.rl.checkpoint"):
        resumed.train(resume=True)
    assert "iter-000003/policy.safetensors does not match its SHA256 checksum" in caplog.text
    assert resumed.start_iteration == 3
    assert _iterations(out) == [1, 2, 3]  # iteration 3 redone once, not logged twice


def test_cli_resume_without_checkpoint_fails_before_loading_models(tmp_path, monkeypatch, capsys):
    import molma.rl
    from molma.cli.main import main

    def no_trainer(*args, **kwargs):
        raise AssertionError("no model should be loaded")

    monkeypatch.setattr(molma.rl, "MultiObjectiveTrainer", no_trainer)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iteration": 1}\n')
    assert main(["train", "--algo", "molma", "--out", str(out), "--resume", "save_every=10"]) == 2
    err = capsys.readouterr().err
    assert "--resume: no usable checkpoint in" in err and "checkpoints does not exist" in err
    assert "save_every=10" in err
    shutil.rmtree(out)
