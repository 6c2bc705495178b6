"""Safe, atomic training checkpoints: safetensors for weights, ``weights_only`` torch files for the
optimizer and RNG states, JSON for the rest. A checkpoint folder is written under a temporary name and
renamed into place, and ``latest`` is replaced atomically, so a killed run always resumes from a
complete checkpoint."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def save_checkpoint(root: Path, iteration: int, tensors: dict[str, dict[str, torch.Tensor]],
                    optimizer_state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``root/iter-NNNNNN`` atomically and point ``root/latest`` at it.

    ``optimizer_state``: ``optimizer.state_dict()``, or a full (gathered) one for sharded training."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"iter-{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        for name, state in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        torch.save({"optimizer": optimizer_state, "rng": rng_state()}, tmp / "state.pt")
        _write_json(tmp / "meta.json", {**meta, "iteration": iteration})
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / ".latest.tmp"
    pointer.write_text(target.name)
    os.replace(pointer, root / "latest")
    return target


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "meta.json").exists() else None


def load_checkpoint(path: Path, names: list[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """Returns (tensors by name, torch state with optimizer and rng, meta)."""
    tensors = {name: load_file(str(path / f"{name}.safetensors")) for name in names}
    state = torch.load(path / "state.pt", weights_only=True)
    meta = json.loads((path / "meta.json").read_text())
    return tensors, state, meta


def prune_checkpoints(root: Path, keep: int = 2) -> None:
    """Keep the newest ``keep`` checkpoints (the one ``latest`` names is always kept)."""
    latest = latest_checkpoint(root)
    folders = sorted(p for p in root.glob("iter-*") if p.is_dir())
    for p in folders[:-keep]:
        if latest is None or p.resolve() != latest.resolve():
            shutil.rmtree(p, ignore_errors=True)
