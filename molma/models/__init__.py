"""Models layer: load causal LMs (builtin embedded SmolLM2, hub ids, local paths), LoRA, tiny test models."""

from molma.models.loading import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    LoraSettings,
    ModelNotAvailableError,
    apply_lora,
    builtin_model_path,
    cache_dir,
    disable_dropout,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from molma.models.sharding import is_peft, shard_model, transformer_blocks
from molma.models.tiny import tiny_llama, tiny_llama_config

__all__ = [
    "BUILTIN_MODELS", "DEFAULT_MODEL", "LoraSettings", "ModelNotAvailableError", "apply_lora",
    "builtin_model_path", "cache_dir", "disable_dropout", "is_peft", "load_model", "load_tokenizer",
    "resolve_model_path",
    "shard_model", "tiny_llama", "tiny_llama_config", "transformer_blocks",
]
