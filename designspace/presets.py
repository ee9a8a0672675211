"""Named designs: the paper's S4, single-strategy baselines and mixes of published methods."""

from __future__ import annotations

from .space import Design

ALL = (1, 2, 3, 4)


def single_strategy(*strategies: str) -> Design:
    """The same strategy set in every layer (uniform grouping and allocation)."""
    return Design(grouping="uniform", allocation="uniform", tuned_groups=ALL, strategies=(tuple(strategies),) * 4)


#: The paper's S4 design: spindle grouping, uniform allocation, all groups tuned, a set per group.
S4 = Design(
    grouping="spindle",
    allocation="uniform",
    tuned_groups=ALL,
    strategies=(("adapter", "lora"), ("adapter", "prefix"), ("adapter", "bitfit", "prefix"), ("bitfit", "lora", "prefix")),
)

PRESETS: dict[str, Design] = {
    "s4": S4,
    "all-lora": single_strategy("lora"),
    "all-adapter": single_strategy("adapter"),
    "all-prefix": single_strategy("prefix"),
    "all-bitfit": single_strategy("bitfit"),
    # UniPELT-like (Mao et al., 2022): adapter, prefix and LoRA in every layer (without its gates).
    "unipelt": single_strategy("adapter", "lora", "prefix"),
    # MAM-like (He et al., 2022): prefix tuning in the attention plus an adapter at the FFN.
    "mam": single_strategy("adapter", "prefix"),
}
