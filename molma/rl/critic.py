"""The critic: one value head per objective (MOLMA section 3.3.3), separate from the policy.

Two backbones:
- ``trainable``: a copy of the reference model's decoder (without LM head), fine-tuned (LoRA or full),
  as in the paper ("trained from the reference model by replacing the language modelling head with a
  value head").
- ``frozen``: the reference model's last hidden states, computed anyway for the KL penalty, feed K
  trainable linear heads. Much cheaper on CPU; the value estimate is less expressive.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from molma.rl.rollout import Batch, by_prompt_length, model_inputs


class ValueHeads(nn.Module):
    """K scalar heads on hidden states: [B, T, H] -> [K, B, T]. Zero-initialised (V = 0 at start)."""

    def __init__(self, hidden_size: int, num_objectives: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_objectives)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        # values are regression targets: float32 even inside a bf16 autocast region
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.linear(hidden.float()).permute(2, 0, 1)


class Critic(nn.Module):
    def __init__(self, backbone: nn.Module | None, hidden_size: int, num_objectives: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = ValueHeads(hidden_size, num_objectives)

    @property
    def frozen(self) -> bool:
        return self.backbone is None

    @classmethod
    def from_reference(cls, reference_lm: nn.Module, num_objectives: int, backbone: str = "trainable",
                       lora=None) -> Critic:
        """Build from the (unwrapped) reference causal LM; ``backbone`` is ``trainable`` or ``frozen``."""
        hidden = reference_lm.config.hidden_size
        if backbone == "frozen":
            return cls(None, hidden, num_objectives)
        decoder = copy.deepcopy(reference_lm.get_decoder())
        for p in decoder.parameters():
            p.requires_grad_(lora is None)
        if lora is not None:
            from molma.models import apply_lora

            decoder = apply_lora(decoder, lora, task_type="FEATURE_EXTRACTION")
        return cls(decoder, hidden, num_objectives)

    def forward(self, batch: Batch, reference_hidden: Tensor | None = None, by_length: bool = True) -> Tensor:
        """Values [K, B, T] at the positions that predict each response token. ``by_length``: a trainable
        backbone computes the prompt tokens every row shares once and runs one forward per group of similar prompt
        lengths (molma.rl.rollout.by_prompt_length)."""
        if self.backbone is None:
            if reference_hidden is None:
                raise ValueError("a frozen-backbone critic needs the reference model's hidden states")
            return self.heads(reference_hidden.detach()) * batch.response_mask
        return by_prompt_length(batch, self._backbone_values, by_length, batch_dim=1, model=self.backbone)

    def _backbone_values(self, batch: Batch, prefix=None) -> Tensor:
        out = self.backbone(**model_inputs(batch, prefix), use_cache=False)
        T = batch.response_mask.shape[1]
        hidden = out.last_hidden_state[:, batch.prompt_len - 1:batch.prompt_len - 1 + T]
        return self.heads(hidden) * batch.response_mask

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
