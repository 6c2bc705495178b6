"""Models layer: load causal LMs (builtin embedded SmolLM2, hub ids, local paths), LoRA, tiny test models;
portable policy folders and model cards (:mod:`molma.models.cards`)."""

from molma.models.blocks import last_layer_parameters, named_transformer_blocks, transformer_blocks
from molma.models.cards import (
    BUILTIN_HUB_IDS,
    export_policy,
    policy_card,
    public_model_id,
    reward_model_card,
    write_reward_model_card,
)
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
    load_policy,
    load_tokenizer,
    resolve_model_path,
)
from molma.models.sharding import is_peft, shard_model
from molma.models.soup import read_lora_adapter, rewarded_soups, soup_lora, write_soup
from molma.models.tiny import tiny_llama, tiny_llama_config

__all__ = [
    "BUILTIN_HUB_IDS", "BUILTIN_MODELS", "DEFAULT_MODEL", "LoraSettings", "ModelNotAvailableError", "apply_lora",
    "builtin_model_path", "cache_dir", "disable_dropout", "export_policy", "is_peft", "last_layer_parameters",
    "load_model", "load_policy", "load_tokenizer", "named_transformer_blocks", "policy_card", "public_model_id",
    "resolve_model_path", "reward_model_card", "write_reward_model_card", "shard_model", "tiny_llama",
    "tiny_llama_config", "transformer_blocks",
]
__all__ += ["read_lora_adapter", "rewarded_soups", "soup_lora", "write_soup"]
