"""Export an all-LoRA plan (any per-layer ranks) to an HF peft ``LoraConfig`` and peft's weight names.

Our LoRA adds ``scale * B A x`` to a projection's output; peft's adds ``alpha / r * B A x``. So the
config sets ``alpha = scale * r`` per module (``alpha_pattern`` next to ``rank_pattern``), names the
role map's real modules in ``target_modules`` and the layers in ``layers_to_transform``. Before
returning, the config is run through peft's own module matcher on the real module names: it must
select exactly our LoRA modules, with exactly our ranks (check what was built, not what was asked).

What peft cannot express raises a one-line :class:`DesignSpaceError` naming it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attach import module_keys
from .backbones import Backbone, backbone_info
from .errors import DesignSpaceError
from .model import PETModel
from .plan import ModuleSpec, Plan

PEFT_PREFIX = "base_model.model."


def _why_not_prefix(plan: Plan, prefixes: list[ModuleSpec]) -> str:
    first = prefixes[0]
    if len({m.size for m in prefixes}) > 1:
        return f"prefix in layer {first.layer} (length {first.size}): peft's prefix tuning has one length for all layers"
    if len(prefixes) < plan.n_layers:
        return f"prefix in {len(prefixes)} of {plan.n_layers} layers: peft's prefix tuning puts prefixes in every layer"
    if any(m.strategy == "lora" for m in plan.modules):
        return f"prefix (length {first.size} in every layer): peft's prefix tuning cannot share one adapter with LoRA"
    return (f"prefix (length {first.size} in every layer): peft's PrefixTuningConfig(num_virtual_tokens={first.size}) "
            "could hold it but to_peft writes LoRA adapters only")


def _why_not(name: str) -> str:
    """Why a strategy other than LoRA cannot go into the LoRA adapter to_peft writes (its own fact)."""
    from .strategies import registry

    s = registry.get(name)
    if s.peft is None:
        return s.peft_note or "peft has no such tuner"
    return f"peft's {s.peft} tuner could hold it, but not in one adapter with LoRA; to_peft writes LoRA adapters only"


def unsupported(plan: Plan) -> str | None:
    """Why peft cannot express ``plan`` (one line, each non-LoRA strategy named once), or None when it can."""
    if not plan.modules:
        return "the plan has no modules"
    by: dict[str, list[ModuleSpec]] = {}
    for m in plan.modules:
        by.setdefault(m.strategy, []).append(m)
    reasons = [
        _why_not_prefix(plan, mods) if s == "prefix"
        else f"{s} in layer {mods[0].layer}: " + _why_not(s)
        for s, mods in by.items() if s != "lora"
    ]
    return "; ".join(reasons) or None


@dataclass(frozen=True)
class _Target:
    spec: ModuleSpec
    role: str
    stack: str  # path of the layer stack, e.g. 'encoder.layer'
    index: int  # the layer's index in its stack (T5: decoder layers count from 0 again)
    inner: str  # path inside the layer, e.g. 'attention.self.query'
    module: nn.Module


def _targets(plan: Plan, backbone: Backbone) -> dict[str, _Target]:
    """peft module name -> target, for every LoRA role of the plan."""
    names = {id(m): name for name, m in backbone.model.named_modules()}
    out: dict[str, _Target] = {}
    for m in plan.modules:
        layer = backbone.layers[m.layer]
        prefix = names[id(layer.module)]
        for role in m.roles:
            ref = layer.roles[role]
            if ref.n_parts > 1:
                raise DesignSpaceError(
                    f"LoRA on {role} in layer {m.layer}: that is one part ({ref.part + 1} of {ref.n_parts}) of the "
                    f"fused projection {ref.path}; peft's LoRA adapts a whole module's output"
                )
            name = names[id(ref.module)]
            if name in out:
                raise DesignSpaceError(f"LoRA roles {out[name].role} and {role} are one module {name}; peft adapts it once")
            stack, _, index = prefix.rpartition(".")
            out[name] = _Target(m, role, stack, int(index), name[len(prefix) + 1 :], ref.module)
    return out


def _check(config, targets: dict[str, _Target], all_names: list[str], scale: float) -> str | None:
    """Where peft's matcher would disagree with the plan (None: it selects exactly our modules and ranks)."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    def selected(name: str) -> bool:
        hit = check_target_module_exists(config, name)
        return bool(hit) and type(hit).__name__ != "_ExcludedModule"

    matched = {n for n in all_names if selected(n)}
    if matched != set(targets):
        extra, lost = sorted(matched - set(targets)), sorted(set(targets) - matched)
        return f"target_modules would adapt {extra[:3]} too and miss {lost[:3]}"
    for name, t in targets.items():
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), name), config.lora_alpha)
        if r != t.spec.size or abs(alpha / r - scale) > 1e-12:
            return f"{name} would get rank {r}, alpha {alpha} instead of rank {t.spec.size}, alpha {scale * t.spec.size}"
    return None


def lora_config(plan: Plan, backbone: Backbone):
    """The ``peft.LoraConfig`` of an all-LoRA ``plan`` on ``backbone`` (a DesignSpaceError otherwise)."""
    from peft import LoraConfig

    why = unsupported(plan)
    if why:
        raise DesignSpaceError(f"cannot export design {plan.design_id} to peft: {why}")
    if len(backbone.layers) != plan.n_layers:
        raise DesignSpaceError(
            f"plan for {plan.backbone} has {plan.n_layers} layers but backbone {backbone.name} has {len(backbone.layers)}"
        )
    targets = _targets(plan, backbone)
    scale = float(plan.options.get("lora_scale", 2.0))
    r = Counter(t.spec.size for t in targets.values()).most_common(1)[0][0]

    def alpha(rank: int) -> float | int:
        a = scale * rank
        return int(a) if a.is_integer() else a

    # Full module names for the modules whose rank differs from the common one: peft reads a key
    # as a regex that must match the end of a module name, and a full name matches one module only.
    odd = {n: t.spec.size for n, t in targets.items() if t.spec.size != r}
    common = dict(
        r=r,
        lora_alpha=alpha(r),
        lora_dropout=float(plan.options.get("lora_dropout", 0.0)),
        bias="none",
        # GPT-2's Conv1D stores its weight as in x out.
        fan_in_fan_out=all(type(t.module).__name__ == "Conv1D" for t in targets.values()),
        rank_pattern=odd,
        alpha_pattern={n: alpha(size) for n, size in odd.items()},
        base_model_name_or_path=_base_path(plan.backbone),
    )
    all_names = [n for n, _ in backbone.model.named_modules()]
    # Preferred form: role paths inside a layer + the layer indices, as a person would write it.
    # It is exact only when one stack holds the layers (T5's two stacks share indices) and no role
    # path is a suffix of another module (BERT's 'output.dense' ends 'attention.output.dense' too);
    # otherwise the full module names, which peft matches exactly.
    stacks = {t.stack for t in targets.values()}
    if len(stacks) == 1:
        config = LoraConfig(
            target_modules=sorted({t.inner for t in targets.values()}),
            layers_to_transform=sorted({t.index for t in targets.values()}),
            layers_pattern=stacks.pop(),  # the whole stack path: "decoder.block" excludes the encoder
            **common,
        )
        if _check(config, targets, all_names, scale) is None:
            return config
    config = LoraConfig(target_modules=sorted(targets), **common)
    problem = _check(config, targets, all_names, scale)
    if problem:
        raise DesignSpaceError(f"cannot express plan {plan.design_id} on {backbone.name} as a LoraConfig: {problem}")
    return config


def _base_path(name: str) -> str:
    from .backbones.offline import SHORT_NAMES

    # A short name means nothing to peft; its local folder does (converted once, then cached).
    if name in SHORT_NAMES:
        from .backbones.offline import resolve_backbone_path

        try:
            return resolve_backbone_path(name)
        except DesignSpaceError:
            return name
    return name


def lora_state_dict(plan: Plan, backbone: Backbone, pet_weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our LoRA weights (keyed as in ``pet.safetensors``: ``L3_lora.A.attn_q``) under peft's names, as
    ``get_peft_model_state_dict`` returns them (``base_model.model.<module>.lora_A.weight``)."""
    out = {}
    keys = dict(zip(plan.modules, module_keys(plan), strict=True))
    for name, t in _targets(plan, backbone).items():
        key = keys[t.spec]
        for ours, theirs in (("A", "lora_A"), ("B", "lora_B")):
            out[f"{PEFT_PREFIX}{name}.{theirs}.weight"] = pet_weights[f"{key}.{ours}.{t.role}"].detach().cpu().contiguous().clone()
    return out


def to_peft(model_or_plan: PETModel | Plan, backbone: Backbone | str | None = None):
    """``(LoraConfig, state_dict)`` for peft; ``state_dict`` is None when given a plan (no weights).

    ``backbone`` resolves role names to module names. Default: for a model, its own backbone with
    the built-in role map of its family; for a plan, the plan's backbone on the meta device (no
    weights are read). Pass the :class:`Backbone` when it was built with a user role map.

    Load the result with ``peft.get_peft_model(fresh_base, config)`` then
    ``peft.set_peft_model_state_dict(peft_model, state_dict)``.
    """
    is_model = isinstance(model_or_plan, PETModel)
    plan = model_or_plan.pet.plan if is_model else model_or_plan
    if isinstance(backbone, str) or backbone is None:
        if is_model and backbone is None:
            backbone = Backbone.from_model(model_or_plan.backbone, name=plan.backbone)
            if backbone.family != model_or_plan.family:
                raise DesignSpaceError(
                    f"this model uses role map {model_or_plan.family!r}; pass to_peft(model, backbone=<its Backbone>)"
                )
        else:
            backbone = backbone_info(backbone or plan.backbone)
    config = lora_config(plan, backbone)
    return config, (lora_state_dict(plan, backbone, model_or_plan.pet.pets.state_dict()) if is_model else None)


def export_peft(saved_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) for a model
    saved by :func:`designspace.io.save_trained`; ``peft.PeftModel.from_pretrained(base, out_dir)``
    reads it. The task head is not a peft concept; it is copied next to them as ``head.safetensors``.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from .io import read_meta

    saved, out = Path(saved_dir), Path(out_dir)
    meta = read_meta(saved)
    plan = Plan.load(saved / "plan.json")
    why = unsupported(plan)
    if why:  # before reading the backbone: the answer does not depend on it
        raise DesignSpaceError(f"cannot export {saved} to peft: {why}")
    backbone = backbone_info(meta["backbone"])
    config = lora_config(plan, backbone)
    state = lora_state_dict(plan, backbone, load_file(str(saved / "pet.safetensors")))
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(saved / "head.safetensors", out / "head.safetensors")
    (out / "designspace.json").write_text(
        json.dumps({"task": meta["task"], "pooling": meta.get("pooling"), "num_labels": meta["num_labels"],
                    "design": plan.design, "metrics": meta.get("metrics", {})}, indent=1) + "\n"
    )
    return out


__all__ = ["to_peft", "export_peft", "lora_config", "lora_state_dict", "unsupported"]
