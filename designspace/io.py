"""Save a trained :class:`PETModel` as a small folder, and load it into a fresh backbone.

The folder holds only what training produced, never the backbone:

- ``plan.json``: the plan (with its design and options), as :meth:`Plan.save` writes it;
- ``pet.safetensors``: the PET weights keyed ``L<layer>_<strategy>.<param>``, prefix
  reparameterisations folded into plain prefixes first (the MLP is a training device only);
- ``head.safetensors``: the task head;
- ``meta.json``: task, backbone name and family, number of labels, metrics, library versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import Backbone, load_backbone
from .errors import DesignSpaceError
from .model import PETModel
from .plan import Plan

FORMAT = 2  # 2: modules seeded per (seed, layer, role, strategy, size); keys unchanged
FILES = ("plan.json", "pet.safetensors", "head.safetensors", "meta.json")


def fold_prefixes(model: PETModel) -> None:
    """Replace every training-time reparameterisation (prefix MLPs) by the parameters it produces;
    the model's outputs do not change."""
    for pet in model.pet.pets.values():
        pet.fold()


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a contiguous CPU copy of each is what we keep.
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_trained(
    model: PETModel,
    plan: Plan | None,
    path_dir: str | Path,
    task: str,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model``'s plan, PET weights, head and meta data to ``path_dir`` (created if needed).

    ``plan`` defaults to the attached plan and must equal it when given. Prefixes trained with a
    reparameterisation MLP are folded in place first (the strategy's ``fold``): ``model`` computes the
    same outputs afterwards but further training would update the plain prefixes. ``extra`` (for
    example the regime and seed) is stored in ``meta.json`` as is.
    """
    from safetensors.torch import save_file

    from .tasks import get_task
    from .train import versions

    attached = model.pet.plan
    if plan is not None and plan.to_dict() != attached.to_dict():
        raise DesignSpaceError(
            f"plan {plan.design_id} on {plan.backbone} is not the plan attached to this model "
            f"({attached.design_id} on {attached.backbone}); pass plan=None to save the attached one"
        )
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    fold_prefixes(model)
    attached.save(out / "plan.json")
    save_file(_tensors(model.pet.pets), str(out / "pet.safetensors"))
    save_file(_tensors(model.head), str(out / "head.safetensors"))
    meta = {
        "format": FORMAT,
        "task": get_task(task).name,
        "backbone": attached.backbone,
        "family": model.family,
        "num_labels": model.num_labels,
        "head_dropout": float(model.head[0].p),
        "pooling": model.pooling,
        "pet_params": model.pet_params(),
        "head_params": model.head_params(),
        "metrics": dict(metrics or {}),
        "versions": versions(),
        **(extra or {}),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def read_meta(path_dir: str | Path) -> dict:
    """``meta.json`` of a saved folder; a one-line error names what is missing."""
    d = Path(path_dir)
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise DesignSpaceError(
            f"{d}: not a saved designspace model (missing {', '.join(missing)}); save one with io.save_trained"
        )
    return json.loads((d / "meta.json").read_text())


def load_trained(path_dir: str | Path, backbone: Backbone | str | None = None) -> PETModel:
    """The saved model on a fresh backbone (default: ``load_backbone`` of the saved backbone name).

    The backbone must be the one the model was trained on (same parameter count and layers); the
    returned model is in eval mode and computes exactly the saved model's outputs.
    """
    from safetensors.torch import load_file

    d = Path(path_dir)
    meta = read_meta(d)
    plan = Plan.load(d / "plan.json")
    if backbone is None or isinstance(backbone, str):
        backbone = load_backbone(backbone or meta["backbone"])
    if backbone.n_params != plan.backbone_params or len(backbone.layers) != plan.n_layers:
        raise DesignSpaceError(
            f"{d} was trained on {plan.backbone} ({plan.backbone_params:,} params, {plan.n_layers} layers) but "
            f"backbone {backbone.name} has {backbone.n_params:,} params, {len(backbone.layers)} layers; "
            "load it on the same backbone, or recompile its design with designspace.apply"
        )
    if meta.get("family") and meta["family"] != backbone.family:
        raise DesignSpaceError(
            f"{d} was trained with role map {meta['family']!r} but backbone {backbone.name} uses "
            f"{backbone.family!r}; pass a Backbone built with the same role map"
        )
    model = PETModel(backbone, plan, num_labels=int(meta["num_labels"]), dropout=float(meta.get("head_dropout", 0.1)))
    fold_prefixes(model)  # the saved prefixes are plain; make the fresh modules take that shape
    device = next(model.backbone.parameters()).device
    model.pet.pets.load_state_dict(load_file(str(d / "pet.safetensors"), device=str(device)), strict=True)
    model.head.load_state_dict(load_file(str(d / "head.safetensors"), device=str(device)), strict=True)
    model.eval()
    return model


__all__ = ["save_trained", "load_trained", "read_meta", "fold_prefixes"]
