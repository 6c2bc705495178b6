"""The single-process layout and the pieces of molma.distributed that need no process group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from molma.distributed import DataParallel, SingleProcess, from_env, shard_rows
from molma.models import last_layer_parameters, named_transformer_blocks, transformer_blocks


def test_single_process_collectives_are_the_identity():
    layout = SingleProcess()
    t = torch.tensor([1.0, 2.0])
    assert layout.is_main and layout.world == 1 and layout.name == "none"
    assert layout.all_reduce_sum(t) is t and layout.gather(t) is t and torch.equal(layout.mean(t), t)
    assert layout.all_max(3) == 3 and layout.any_rank(True) and not layout.any_rank(False)
    assert layout.gather_objects(["a"]) == ["a"] and list(layout.rows(4)) == [0, 1, 2, 3]
    idx = torch.tensor([3, 1])
    mine, scale = layout.minibatch_share(idx, torch.ones(4, 2))
    assert mine is idx and scale == 1.0
    assert layout.gathered_state(nn.Linear(2, 2), trainable_only=True) is None
    assert not layout.shards_parameters and not layout.synced_generation


def test_from_env_without_a_launcher_is_one_process(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert isinstance(from_env("cpu"), SingleProcess)
    assert isinstance(from_env("cpu", fsdp=True), SingleProcess)
    assert "fsdp: true needs several processes" in caplog.text


def test_distributed_layouts_need_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DataParallel()


def test_rows_split_evenly():
    assert [list(shard_rows(6, 3, r)) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="evenly"):
        shard_rows(5, 2, 0)


class _TwoLists(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
        self.heads = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])


def test_transformer_blocks_tie_goes_to_the_first_list():
    model = _TwoLists()
    name, blocks = named_transformer_blocks(model)
    assert name == "layers" and blocks is model.layers and transformer_blocks(model) is model.layers
    assert last_layer_parameters(model) == list(model.layers[1].parameters())
    assert named_transformer_blocks(nn.Linear(2, 2)) is None
