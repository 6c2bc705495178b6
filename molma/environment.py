"""What a result was produced with: package versions and hardware, recorded by reports, reward model
metadata and model cards (one home for all three)."""

from __future__ import annotations

import functools
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # AMX tiles (Intel Sapphire Rapids on), AVX-512 BF16 dot products


def cpuinfo_facts(text: str) -> dict:
    """The CPU's model name and which of :data:`BF16_CPU_FLAGS` it lists, from ``/proc/cpuinfo`` text."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags":
            flags.update(value.split())
    return {"cpu_model": model, "cpu_bf16_units": [f for f in BF16_CPU_FLAGS if f in flags]}


@functools.lru_cache(maxsize=1)
def read_cpuinfo() -> dict:
    """:func:`cpuinfo_facts` of this machine (no model and no units where ``/proc/cpuinfo`` is absent)."""
    try:
        return cpuinfo_facts(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {"cpu_model": None, "cpu_bf16_units": []}


#: The packages a trained model's metadata and card record.
MODEL_PACKAGES = ("molma", "torch", "transformers", "peft", "trl")


def package_versions(names: Iterable[str] = MODEL_PACKAGES) -> dict[str, str | None]:
    """``{name: version}`` of installed packages, from their distribution metadata (or the module's
    ``__version__`` when it runs from a source tree); ``None`` for one that is not installed."""
    import importlib
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            try:
                out[name] = getattr(importlib.import_module(name), "__version__", None)
            except ImportError:
                out[name] = None
    return out


def environment_info() -> dict:
    """Versions (python, torch, transformers, peft, numpy, matplotlib, molma) and hardware (the CPU's model
    and bf16 units matter for every CPU timing: AMX makes bf16 matrix products much faster than AVX-512 BF16)."""
    import torch

    versions = package_versions(("torch", "transformers", "peft", "numpy", "matplotlib", "molma"))
    return {
        "python": sys.version.split()[0], "torch": versions["torch"],
        "transformers": versions["transformers"], "peft": versions["peft"], "numpy": versions["numpy"],
        "matplotlib": versions["matplotlib"], "molma": versions["molma"],
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        **read_cpuinfo(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
    }
