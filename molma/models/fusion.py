"""Sibling projections as one product while decoding: the linear layers of one module that read the same input
(attention's ``q_proj`` / ``k_proj`` / ``v_proj``, the MLP's ``gate_proj`` / ``up_proj``) run as a single
prepacked matrix product over their stacked weights, each taking its slice of the output.

Decoding multiplies 16 rows (one new token per sequence) by every weight at every step, so a step is a long
series of small calls, each with a fixed cost (measured on SmolLM2-135M's shapes, bf16, 16 rows, one thread:
q/k/v 147 us as three packed products, 114 us as one; gate/up 315 vs 300 us; the same numbers bit for bit),
and every call also casts its float32 input to bf16 again. transformers' Llama-family modules call the
siblings one after another on the same tensor, which is what makes this possible without replacing their
forwards; written here because no library fuses the projections of an eager model (inductor does it for
compiled graphs, which cost more to compile than an RL run's rollouts take here).

A sibling called on any other input (another architecture, a hook that changed it) computes its own slice of a
fresh product: always the same result, at worst slower. Inference contexts only (no gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

# attribute names of layers that transformers' Llama-family modules (Llama, Mistral, Qwen2, SmolLM2, Gemma) call
# on the same input, in this order
SIBLING_NAMES: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def sibling_groups(model: nn.Module, eligible: Iterable[nn.Module]) -> list[list[nn.Module]]:
    """The groups of :data:`SIBLING_NAMES` layers of each module of ``model`` that are all in ``eligible``
    (layers whose inference forward molma replaces), in the names' order."""
    eligible = set(eligible)
    groups = []
    for module in model.modules():
        children = module._modules  # not getattr: a missing attribute raises inside nn.Module (slow over ~10k modules)
        for names in SIBLING_NAMES:
            layers = [children.get(name) for name in names]
            if all(layer is not None and layer in eligible for layer in layers):
                groups.append(layers)
    return groups


class SharedInputProduct:
    """One product for layers called on the same input: ``product(x)`` returns their outputs side by side
    (sizes ``sizes`` along the last dimension). The first member called computes it and keeps the other
    members' slices for that input; a member called with the very tensor (unchanged since: same version) takes
    its slice, any other call computes afresh. Slices are views of the product, as ``torch.split`` returns."""

    def __init__(self, product: Callable[[Tensor], Tensor], sizes: list[int]):
        self.product, self.sizes = product, sizes
        self._input: Tensor | None = None
        self._version = -1
        self._pending: dict[int, Tensor] = {}

    def member(self, index: int) -> Callable[[Tensor], Tensor]:
        """The forward of the ``index``-th layer."""

        def forward(x: Tensor) -> Tensor:
            if x is self._input and x._version == self._version and index in self._pending:
                out = self._pending.pop(index)
                if not self._pending:
                    self._input = None  # every slice served: hold nothing between steps
                return out
            outputs = self.product(x).split(self.sizes, dim=-1)
            self._pending = {i: o for i, o in enumerate(outputs) if i != index}
            self._input, self._version = (x, x._version) if self._pending else (None, -1)
            return outputs[index]

        return forward
