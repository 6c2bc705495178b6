"""Safe, atomic training checkpoints: safetensors for weights, ``weights_only`` torch files for the
optimizer and RNG states, JSON for the rest. A checkpoint folder is written under a temporary name and
renamed into place, and ``latest`` is replaced atomically, so a killed run always resumes from a
complete checkpoint.

Each checkpoint also holds ``SHA256SUMS`` (``sha256sum -c`` format) for its files. Resuming
(:func:`latest_checkpoint`) verifies them: a damaged or truncated checkpoint, a missing ``meta.json``
or a ``latest`` pointer naming nothing falls back to the newest intact older checkpoint (pruning keeps
two) with a warning naming the damaged file; with none intact it is a :class:`CheckpointError` saying
what was found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from molma.atomic import atomic_folder, write_text_atomic

log = logging.getLogger(__name__)

CHECKSUMS = "SHA256SUMS"
_FOLDER = re.compile(r"iter-\d+")


class CheckpointError(RuntimeError):
    """No usable checkpoint to resume from, or an unreadable checkpoint file (the message names it)."""


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
    target = root / f"iter-{iteration:06d}"
    with atomic_folder(target) as tmp:  # a folder of the same iteration is replaced only at the end
        for name, state in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        torch.save({"optimizer": optimizer_state, "rng": rng_state()}, tmp / "state.pt")
        _write_json(tmp / "meta.json", {**meta, "iteration": iteration})
        sums = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    write_text_atomic(root / "latest", target.name)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pointed(root: Path) -> Path | None:
    """The folder ``root/latest`` names (unchecked), or None."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    return root / name if _FOLDER.fullmatch(name) else None


def _legacy_problem(file: Path) -> str | None:
    """A reader's complaint about ``file`` (state.pt: the zip CRCs; safetensors: header and sizes)."""
    try:
        if file.suffix == ".pt":
            with zipfile.ZipFile(file) as z:
                bad = z.testzip()
            return None if bad is None else f"member {bad} fails its CRC"
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no Mapping)
                f.get_slice(key)
    except Exception as err:  # any reader failure means damaged
        return f"{type(err).__name__}: {err}"
    return None


def checkpoint_problem(path: Path, verify: bool = True) -> str | None:
    """Why checkpoint folder ``path`` cannot be resumed from (naming the file), or None when it can.

    Always: the folder and ``meta.json`` (valid, with the iteration) exist and every file ``SHA256SUMS``
    lists is there. ``verify``: the files match their checksums (reads every byte); a checkpoint
    written before checksums existed gets its files' own integrity checks instead."""
    if not path.is_dir():
        return f"{path} does not exist"
    meta = path / "meta.json"
    if not meta.is_file():
        return f"{meta} is missing"
    sums_file = path / CHECKSUMS
    sums: dict[str, str] = {}
    if sums_file.is_file():
        for line in sums_file.read_text(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or "/" in name:
                return f"{sums_file} is damaged (line {line[:80]!r})"
            sums[name] = digest
        for name in ("meta.json", "state.pt"):
            if name not in sums:
                return f"{sums_file} does not list {name}"
        for name in sums:
            if not (path / name).is_file():
                return f"{path / name} is missing"
    if verify:
        for name, digest in sums.items():
            if _sha256(path / name) != digest:
                return f"{path / name} does not match its SHA256 checksum (truncated or corrupted)"
    try:
        iteration = json.loads(meta.read_text())["iteration"]
        if not isinstance(iteration, int):
            raise TypeError(f"iteration is {iteration!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        return f"{meta} is damaged ({type(err).__name__}: {err})"
    if verify and not sums:  # written before checksums: the formats' own checks
        for file in [path / "state.pt", *sorted(path.glob("*.safetensors"))]:
            problem = _legacy_problem(file)
            if problem:
                return f"{file} is damaged or truncated ({problem})"
    return None


def find_checkpoint(root: Path, verify: bool = True) -> tuple[Path | None, list[str]]:
    """The newest usable checkpoint of ``root`` and the problems of those skipped on the way.

    Tried in order: the folder ``latest`` names, then every ``iter-*`` folder from the newest. Returns
    ``(None, problems)`` when none is usable; ``problems`` then says what was found."""
    root = Path(root)
    if not root.is_dir():
        return None, [f"{root} does not exist"]
    problems: list[str] = []
    pointer = root / "latest"
    pointed = _pointed(root)
    if pointer.exists() and pointed is None:
        problems.append(f"{pointer} is damaged (it names no iter-NNNNNN folder)")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _FOLDER.fullmatch(p.name)), reverse=True)
    candidates = ([pointed] if pointed is not None else []) + [p for p in folders if p != pointed]
    if not candidates and not problems:
        problems.append(f"{root} holds no checkpoint")
    for path in candidates:
        problem = checkpoint_problem(path, verify)
        if problem is None:
            return path, problems
        problems.append(problem)
    return None, problems


def latest_checkpoint(root: Path, required: bool = False, verify: bool = True) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names when intact, else the newest intact
    older one (with a warning naming what is damaged). None when there is none, or with ``required``
    a :class:`CheckpointError` listing what was found."""
    path, problems = find_checkpoint(root, verify)
    if path is None:
        if required:
            raise CheckpointError(f"no usable checkpoint to resume from: {'; '.join(problems)}")
        return None
    if problems:
        log.warning("skipping unusable checkpoint(s): %s; resuming from %s", "; ".join(problems), path)
    return path


def load_checkpoint(path: Path, names: list[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """Returns (tensors by name, torch state with optimizer and rng, meta). A file that cannot be read
    raises :class:`CheckpointError` naming it (check first with :func:`checkpoint_problem`)."""

    def read(file: Path, reader):
        try:
            return reader(file)
        except FileNotFoundError as err:
            raise CheckpointError(f"{file} is missing") from err
        except Exception as err:  # torch / safetensors / json raise many kinds
            raise CheckpointError(f"{file} cannot be read (damaged or truncated?): "
                                  f"{type(err).__name__}: {err}") from err

    path = Path(path)
    tensors = {name: read(path / f"{name}.safetensors", lambda f: load_file(str(f))) for name in names}
    state = read(path / "state.pt", lambda f: torch.load(f, weights_only=True))
    meta = read(path / "meta.json", lambda f: json.loads(f.read_text()))
    return tensors, state, meta


def prune_checkpoints(root: Path, keep: int = 2) -> None:
    """Keep the newest ``keep`` checkpoints (the one ``latest`` names is always kept)."""
    latest = _pointed(root)
    folders = sorted(p for p in root.glob("iter-*") if p.is_dir())
    for p in folders[:-keep]:
        if latest is None or p.resolve() != latest.resolve():
            shutil.rmtree(p, ignore_errors=True)
