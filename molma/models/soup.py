"""Rewarded Soups (Rame et al. 2023, NeurIPS, arXiv 2306.04488, eq. 1): interpolate the weights of
policies fine-tuned from one base on different rewards, ``theta = sum_i c_i theta_i`` (``sum_i c_i = 1``),
to trace a Pareto front without further training.

For LoRA policies ``theta_i = theta_0 + dW_i`` with ``dW_i = s_i B_i A_i`` per adapted module
(``s_i = alpha_i / r_i``, or ``alpha_i / sqrt(r_i)`` with rsLoRA), so the soup is ``theta_0 + sum_i c_i dW_i``.
Mixing the A and B matrices linearly is NOT that (``(c B_1 + (1-c) B_2)(c A_1 + (1-c) A_2)`` has cross
terms); concatenating the ranks is exact:

    A = [A_1; A_2; ...] (rows),  B = [c_1 s_1 B_1, c_2 s_2 B_2, ...] (columns),  lora_alpha = r = sum r_i
    => s B A = sum_i c_i s_i B_i A_i

(peft's ``add_weighted_adapter(combination_type="cat")`` does the same inside a loaded model; this module
works on the saved files, without loading the base model). A module adapted by only some policies gets
zero blocks for the others; every module is zero-padded to the largest total rank. Adapters with
coefficient 0 are left out. Supported: plain LoRA (``lora_A`` / ``lora_B``, also embedding LoRA), any
ranks, alphas, rsLoRA, ``rank_pattern`` and different target modules per policy; refused: DoRA, LoRA
biases, ``modules_to_save``, ``alpha_pattern``.

A soup folder is a policy folder like a run's ``final/``: ``adapter_model.safetensors``,
``adapter_config.json`` (``base_model_name_or_path`` = the base's public id, so
``peft.AutoPeftModelForCausalLM`` loads it), ``molma.json`` (``base_model`` as molma names it, for
``molma eval`` / :func:`molma.rl.load_policy`, and a ``soup`` record), the tokenizer, ``README.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?:(?P<lin>lora_[AB])\.weight|(?P<emb>lora_embedding_[AB]))$")


@dataclass
class LoraAdapter:
    """A saved LoRA adapter: its ``adapter_config.json`` and per-module ``(A, B, scaling)``, with module
    names as saved by peft (``base_model.model.<module path>``) and ``kind`` ``lora`` or ``embedding``."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, tuple[Tensor, Tensor, float]]
    kinds: dict[str, str]


def _scaling(config: Mapping[str, Any], rank: int) -> float:
    alpha = float(config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_lora_adapter(folder: str | Path) -> LoraAdapter:
    """Read a peft LoRA adapter folder; raises ``ValueError`` (naming the file and key) for what a soup
    cannot combine exactly, ``FileNotFoundError`` when it is not an adapter folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{folder}: not a LoRA policy folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}; "
                                "a soup of fully fine-tuned models is not supported)")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"{cfg_path}: field 'peft_type' is {config.get('peft_type')!r}, only LORA adapters mix")
    for field_name, bad in (("use_dora", bool(config.get("use_dora"))),
                            ("bias", config.get("bias", "none") != "none"),
                            ("lora_bias", bool(config.get("lora_bias"))),
                            ("modules_to_save", bool(config.get("modules_to_save"))),
                            ("alpha_pattern", bool(config.get("alpha_pattern"))),
                            ("target_parameters", bool(config.get("target_parameters")))):
        if bad:
            raise ValueError(f"{cfg_path}: field {field_name!r} = {config.get(field_name)!r} is not supported by "
                             "the soup (only plain LoRA weight deltas combine exactly)")
    tensors = load_file(str(weights))
    parts: dict[str, dict[str, Tensor]] = {}
    kinds: dict[str, str] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{weights}: tensor {key!r} is not a LoRA A/B matrix (DoRA magnitudes, biases and "
                             "modules_to_save cannot be souped)")
        side = (m.group("lin") or m.group("emb"))[-1]
        parts.setdefault(m.group("module"), {})[side] = value
        kinds[m.group("module")] = "embedding" if m.group("emb") else "lora"
    modules = {}
    for name, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{weights}: module {name!r} has lora_{'A' if 'A' in ab else 'B'} only")
        a, b = ab["A"], ab["B"]
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"{weights}: module {name!r}: lora_A has rank {a.shape[0]}, lora_B {b.shape[1]}")
        modules[name] = (a, b, _scaling(config, int(a.shape[0])))
    if not modules:
        raise ValueError(f"{weights}: no LoRA matrices")
    return LoraAdapter(folder, config, modules, kinds)


def lora_deltas(adapter: LoraAdapter) -> dict[str, Tensor]:
    """``{module: s B A}`` in float64 (the weight delta of a linear module; an embedding's is its
    transpose, as peft applies it)."""
    out = {}
    for name, (a, b, s) in adapter.modules.items():
        if a.dim() != 2:
            raise ValueError(f"{adapter.path}: module {name!r}: only 2-D LoRA matrices have a delta here")
        out[name] = s * b.double() @ a.double()
    return out


def _target_modules(adapters: Sequence[LoraAdapter], modules: Sequence[str]) -> Any:
    keys = ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")
    first = adapters[0].config

    def norm(v: Any) -> Any:
        return sorted(v) if isinstance(v, (list, tuple, set)) else v

    if all(norm(a.config.get(k)) == norm(first.get(k)) for a in adapters for k in keys):
        return first.get("target_modules")
    # different targets: name every adapted module by its full path (peft matches a full path exactly)
    return sorted(m[len(PEFT_PREFIX):] if m.startswith(PEFT_PREFIX) else m for m in modules)


def soup_lora(adapters: Sequence[LoraAdapter], coefficients: Sequence[float]
              ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The exact LoRA adapter of ``theta_0 + sum_i c_i dW_i``: ``(adapter_config dict, state dict)``.

    Coefficients are the interpolation weights (Rewarded Soups: >= 0, summing to 1); the config is the
    first adapter's with ``r = lora_alpha = `` the total rank (scaling 1), no rsLoRA, no patterns.
    """
    if len(adapters) != len(coefficients) or not adapters:
        raise ValueError(f"{len(adapters)} adapters but {len(coefficients)} coefficients")
    coefs = [float(c) for c in coefficients]
    if any(not math.isfinite(c) or c < 0 for c in coefs) or not math.isclose(sum(coefs), 1.0, abs_tol=1e-9):
        raise ValueError(f"soup coefficients must be >= 0 and sum to 1, got {coefs}")
    task = {a.config.get("task_type") for a in adapters}
    if len(task) > 1:
        raise ValueError(f"adapters of different task types cannot be mixed: {sorted(map(str, task))}")
    used = [(a, c) for a, c in zip(adapters, coefs) if c != 0.0]
    names = list(dict.fromkeys(m for a, _ in used for m in a.modules))
    blocks: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    for name in names:
        kinds = {a.kinds[name] for a, _ in used if name in a.modules}
        if len(kinds) > 1:
            raise ValueError(f"module {name!r} is an embedding LoRA in one adapter and a linear LoRA in another")
        a_parts, b_parts = [], []
        for adapter, c in used:
            if name not in adapter.modules:
                continue
            a, b, s = adapter.modules[name]
            a_parts.append(a.double())
            b_parts.append(c * s * b.double())
        shapes = {(p.shape[1:], q.shape[0]) for p, q in zip(a_parts, b_parts)}
        if len(shapes) > 1:
            raise ValueError(f"module {name!r} has differently shaped LoRA matrices in the adapters (same base?)")
        blocks[name] = (a_parts, b_parts)
    rank = max(sum(p.shape[0] for p in a_parts) for a_parts, _ in blocks.values())
    state: dict[str, Tensor] = {}
    for name, (a_parts, b_parts) in blocks.items():
        a = torch.cat(a_parts, dim=0)
        b = torch.cat(b_parts, dim=1)
        if a.shape[0] < rank:  # zero rows / columns add nothing to B A
            a = torch.cat([a, a.new_zeros((rank - a.shape[0], *a.shape[1:]))], dim=0)
            b = torch.cat([b, b.new_zeros((b.shape[0], rank - b.shape[1], *b.shape[2:]))], dim=1)
        kind = next(ad.kinds[name] for ad, _ in used if name in ad.kinds)
        a_key, b_key = (f"{name}.lora_A.weight", f"{name}.lora_B.weight") if kind == "lora" else \
            (f"{name}.lora_embedding_A", f"{name}.lora_embedding_B")
        state[a_key] = a.float().contiguous()
        state[b_key] = b.float().contiguous()
    config = dict(used[0][0].config)
    config.update({"r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
                   "target_modules": _target_modules([a for a, _ in used], names), "inference_mode": True})
    if config["target_modules"] != used[0][0].config.get("target_modules"):
        config.update({"layers_to_transform": None, "layers_pattern": None, "exclude_modules": None})
    return config, state


def policy_base(folder: str | Path) -> str:
    """The base model of a LoRA policy folder: ``molma.json``'s ``base_model``, else the adapter's
    ``base_model_name_or_path``."""
    folder = Path(folder)
    meta = folder / "molma.json"
    if meta.exists():
        base = json.loads(meta.read_text(encoding="utf-8")).get("base_model")
        if base:
            return str(base)
    base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: field 'base_model_name_or_path' is missing")
    return str(base)


def soup_label(weight: float) -> str:
    """Folder name / model label of the soup with weight ``w`` on the first policy: ``w0.25``."""
    return f"w{float(weight):g}"


def _card(base_public: str, policies: Sequence[str], coefficients: Sequence[float], rank: int) -> str:
    import yaml

    from molma.models.cards import is_hub_id

    front = yaml.safe_dump({**({"base_model": base_public} if is_hub_id(base_public) else {}),
                            "library_name": "peft", "pipeline_tag": "text-generation",
                            "tags": ["molma", "rewarded-soups", "lora", "multi-objective"]}, sort_keys=False)
    mix = " + ".join(f"{c:g} x `{p}`" for p, c in zip(policies, coefficients))
    return (f"---\n{front}---\n# Rewarded soup\n\nA linear interpolation of LoRA policies fine-tuned from one base "
            f"model (Rewarded Soups, Rame et al. 2023): weights = base + {mix} (their weight deltas). The adapter "
            f"concatenates the policies' ranks (rank {rank}), which is exact for the weighted sum of deltas.\n\n"
            "## Use\n\n```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")\n```\n\n'
            "or `molma eval --models soup=PATH/TO/THIS/FOLDER ...`.\n")


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` (replacing an older one) without leaving a half-written
    ``target``."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_soup(policies: Sequence[str | Path], coefficients: Sequence[float], out: str | Path,
               adapters: Sequence[LoraAdapter] | None = None) -> Path:
    """Write the soup ``base + sum_i c_i dW_i`` of the LoRA policy folders ``policies`` to the policy folder
    ``out`` (written in a temporary folder beside it, then moved into place). The policies must share
    their base model; the tokenizer comes from the first policy folder that has one."""
    from safetensors.torch import save_file

    from molma.models.cards import public_model_id

    folders = [Path(p) for p in policies]
    adapters = list(adapters) if adapters is not None else [read_lora_adapter(p) for p in folders]
    bases = [policy_base(p) for p in folders]
    if len({public_model_id(b) for b in bases}) > 1:
        raise ValueError("the policies of a soup must share their base model, got "
                         + ", ".join(f"{p}: {b}" for p, b in zip(folders, bases)))
    config, state = soup_lora(adapters, coefficients)
    config["base_model_name_or_path"] = public_model_id(bases[0])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        record = {"base_model": bases[0], "lora": True,
                  "soup": {"method": "rewarded-soups", "policies": [str(p.resolve()) for p in folders],
                           "coefficients": [float(c) for c in coefficients], "rank": int(config["r"])}}
        (tmp / "molma.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tok_src = next((p for p in folders if (p / "tokenizer_config.json").exists()), None)
        if tok_src is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(str(tmp))
        (tmp / "README.md").write_text(_card(config["base_model_name_or_path"], [str(p) for p in folders],
                                             coefficients, int(config["r"])), encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class SoupPolicy:
    """One written soup: its label (``w0.25``), folder and weight on the first policy."""

    label: str
    path: Path
    weight: float


def rewarded_soups(policies: Sequence[str | Path], weights: Sequence[float], out_dir: str | Path) -> list[SoupPolicy]:
    """Two LoRA policies A, B and weights w: one policy folder ``out_dir/w<w>`` per w with
    ``theta = theta_0 + w dW_A + (1 - w) dW_B`` (w is the weight of the FIRST policy), and
    ``out_dir/soup.json`` listing them. Returns the soups in the order of ``weights``."""
    if len(policies) != 2:
        raise ValueError(f"a soup sweep takes two policies, got {len(policies)}")
    ws = [float(w) for w in weights]
    if not ws:
        raise ValueError("give at least one weight")
    for w in ws:
        if not math.isfinite(w) or not 0.0 <= w <= 1.0:
            raise ValueError(f"soup weights must be in [0, 1], got {w}")
    labels = [soup_label(w) for w in ws]
    if len(set(labels)) != len(labels):
        raise ValueError(f"soup weights given twice: {ws}")
    adapters = [read_lora_adapter(p) for p in policies]
    out_dir = Path(out_dir)
    soups = []
    for w, label in zip(ws, labels):
        path = write_soup(policies, [w, 1.0 - w], out_dir / label, adapters=adapters)
        soups.append(SoupPolicy(label, path, w))
        log.info("soup %s -> %s", label, path)
    from molma.atomic import write_text_atomic

    manifest = {"method": "rewarded-soups", "policies": [str(Path(p).resolve()) for p in policies],
                "soups": [{"label": s.label, "weight": s.weight, "coefficients": [s.weight, 1.0 - s.weight],
                           "path": str(s.path.resolve())} for s in soups]}
    write_text_atomic(out_dir / "soup.json", json.dumps(manifest, indent=2) + "\n")
    return soups
