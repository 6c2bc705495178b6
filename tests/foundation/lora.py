"""A LoRA policy whose adapters are not zero, for tests of the forwards that fold or run them (peft starts B at
zero: folding would add nothing)."""

from __future__ import annotations

import torch


def lora_policy_with_trained_adapters(model, r: int = 2, seed: int = 0, target_modules="all-linear"):
    """``model`` under LoRA (rank ``r``, alpha ``2 r``) with every B drawn as 0.05 x N(0, 1) from ``seed``."""
    from molma.models import LoraSettings, apply_lora

    policy = apply_lora(model, LoraSettings(r=r, alpha=2 * r, target_modules=target_modules))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return policy
