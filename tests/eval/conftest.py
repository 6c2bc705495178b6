"""Evaluation tests run tiny models: one intra-op thread is as fast, and far faster when other jobs
share the CPU (OpenMP threads spin against each other). The previous setting is restored after each
test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
