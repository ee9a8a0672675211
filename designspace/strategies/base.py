"""What every PET strategy provides, and every fact about it, in one class.

A strategy is *sized* (adapter bottleneck, LoRA rank, prefix length) or *fixed* (BitFit, LNFit, IA3:
the size is 1, meaning "on"). It knows its cost for a size (``cost(layer, size) `` must equal the
parameters its ``init`` creates; ``attach`` checks that on the real model), the initial values of its
parameters for one role, and how those parameters change the hooked module's input or output.

This module and every strategy module import no torch at import time: designs, spaces and experiment
files validate strategy names and print labels without it. Tensors appear only inside ``init`` and
``transform``, which run while a model is built or trained.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from ..errors import DesignSpaceError

if TYPE_CHECKING:
    import torch

    from ..backbones.roles import Layer

#: Where a strategy's transform runs on a role's module: on its output (a forward hook), on its input
#: (a forward pre-hook), or inside the attention function (prefix tuning).
HOOKS = ("output", "input", "attention")


class Strategy(ABC):
    """One PET method. Subclasses set the facts below and implement ``unit_cost``, ``init``, ``transform``."""

    name: str = ""
    label: str = ""  # one letter in design descriptions: {A,L}
    size_name: str = "size"  # what the size means: rank, bottleneck, length
    size_symbol: str = ""  # in plan tables: r=8, b=12, len=5
    lr: float = 2e-3  # default learning rate of its parameters
    color: str = "tab:gray"  # in figures
    peft: str | None = None  # the peft tuner that can hold it, None when peft has none
    peft_note: str = ""  # why peft cannot hold it (export errors), when ``peft`` is None
    sized: bool = True
    default_roles: tuple[str, ...] = ()

    # --- placement --------------------------------------------------------------------------------
    def hook(self, role: str) -> str:
        """Where the transform runs on ``role``'s module: 'output', 'input' or 'attention'."""
        return "output"

    def needed_roles(self, roles: tuple[str, ...]) -> tuple[str, ...]:
        """Roles a layer must have for this strategy on ``roles`` (prefix also needs attn_k's width)."""
        return tuple(roles)

    def check_roles(self, layer: Layer, roles: tuple[str, ...], where: str) -> None:
        """One line when the role map lacks a role this strategy needs (e.g. ln_ffn on Phi)."""
        missing = [r for r in self.needed_roles(roles) if r not in layer.roles]
        if missing:
            raise DesignSpaceError(
                f"{where}: {self.name} needs role(s) {', '.join(missing)}, which the role map does not define "
                f"for layer {layer.index}; pass {self.name}_roles without them in the plan options, "
                "or a role map that names them"
            )

    # --- cost -------------------------------------------------------------------------------------
    def base_cost(self, layer: Layer, roles: tuple[str, ...]) -> int:
        """Parameters that do not grow with size (for example an adapter's output bias)."""
        return 0

    @abstractmethod
    def unit_cost(self, layer: Layer, roles: tuple[str, ...]) -> int:
        """Parameters added by one more unit of size (0 for fixed-cost strategies)."""

    def max_size(self, layer: Layer, roles: tuple[str, ...]) -> int | None:
        """The largest meaningful size on this layer (a rank above the width adds nothing), or None."""
        return None

    def cost(self, layer: Layer, size: int, roles: tuple[str, ...] | None = None) -> int:
        roles = tuple(roles or self.default_roles)
        if size <= 0:
            return 0
        if not self.sized:
            return self.base_cost(layer, roles)
        return self.base_cost(layer, roles) + size * self.unit_cost(layer, roles)

    # --- parameters and computation ---------------------------------------------------------------
    @abstractmethod
    def init(self, layer: Layer, size: int, role: str, roles: tuple[str, ...], options: dict) -> dict[str, Any]:
        """Initial parameters for ``role`` (one of ``roles``): name -> tensor (or an ``nn.Module``).

        Called with the random state seeded from (seed, layer, role, strategy, size) only, so the same
        module starts from the same weights in every design that has it. Names may hold one dot
        (``A.attn_q``) to group parameters.
        """

    @abstractmethod
    def transform(self, pet, role: str, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """The new output (hook 'output') or input (hook 'input') of ``role``'s module.

        ``x`` is the module's input and ``out`` its output (None for an input hook), for the rows of
        one design; ``pet`` holds this module's parameters as attributes.
        """

    def effective_params(self, pet) -> int:
        """Parameters that a saved copy holds (training-only reparameterisations excluded)."""
        return sum(p.numel() for p in pet.parameters())

    def fold(self, pet) -> None:  # noqa: B027 - most strategies have nothing to fold
        """Replace a training-time reparameterisation by the plain parameters it produces."""

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


def add_to_output(output, fn):
    """Apply ``fn`` to a module's output tensor, whether it returns a tensor or a tuple."""
    if isinstance(output, tuple):
        return (fn(output[0]),) + output[1:]
    return fn(output)


def place_part(delta, ref, width: int):
    """Pad a delta for one part of a fused projection (GPT-2's c_attn) to the whole output's width."""
    if ref.n_parts == 1:
        return delta
    import torch.nn.functional as F

    sl = ref.out_slice()
    return F.pad(delta, [sl.start, width - sl.stop])
