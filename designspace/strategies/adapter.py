"""Sequential bottleneck adapter (Houlsby et al., 2019) after the FFN output projection (default) or
after another hidden-state role such as ``attn_o`` (the adapter sits on ``roles[0]``)."""

from __future__ import annotations

from .base import Strategy

ACTIVATIONS = ("relu", "gelu", "silu")


class Adapter(Strategy):
    name = "adapter"
    label = "A"
    size_name = "bottleneck"
    size_symbol = "b"
    lr = 2e-3
    color = "tab:blue"
    peft_note = "peft has no sequential bottleneck (Houlsby) adapter tuner"
    default_roles = ("ffn_out",)

    @staticmethod
    def _role(roles) -> str:
        return roles[0] if roles else Adapter.default_roles[0]

    def needed_roles(self, roles):
        return (self._role(roles),)

    def base_cost(self, layer, roles) -> int:
        return layer.dim(self._role(roles))  # the up-projection's bias

    def unit_cost(self, layer, roles) -> int:
        return 2 * layer.dim(self._role(roles)) + 1  # one down row + its bias, one up column

    def max_size(self, layer, roles) -> int:
        return layer.dim(self._role(roles))

    def init(self, layer, size, role, roles, options):
        import torch

        if role != self._role(roles):
            return {}
        d = layer.dim(role)
        # Zero up-projection: the adapter is the identity at initialisation.
        return {
            "down.weight": torch.randn(size, d) * 0.02,
            "down.bias": torch.zeros(size),
            "up.weight": torch.zeros(d, size),
            "up.bias": torch.zeros(d),
        }

    def transform(self, pet, role, x, out):
        import torch.nn.functional as F

        act = pet.options.get("adapter_activation", "relu")
        h = F.linear(out, pet.down["weight"], pet.down["bias"])
        h = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[act](h)
        return out + F.linear(h, pet.up["weight"], pet.up["bias"])


STRATEGY = Adapter()
