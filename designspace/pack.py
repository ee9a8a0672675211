"""Packs: several designs trained in one pass over one frozen backbone (no torch here).

A *pack* is K trial specs trained together (``train_pack.run_pack``): every batch is repeated K
times, rows [kB, (k+1)B) belong to design k, and each design has its own PET modules, head,
optimiser groups and gradient clipping. The loss is the sum of the designs' mean losses, so each
design's gradients, and with them its whole training run, are those it has alone.

That holds only if every design of a pack sees the same examples in the same order and trains for
the same number of steps under the same schedule: this module says which specs may share a pass
(:func:`pack_key`), groups a list of specs into packs (:func:`group_packs`) and estimates what a pack
needs in memory (:func:`pack_memory_mb`), for the pool to start no more packs than memory holds.
"""

from __future__ import annotations

import json
import math

from .errors import DesignSpaceError
from .trial import TrialSpec

#: Regime fields a pack's designs may differ in: they act on each design's own parameters only
#: (its AdamW groups' rates and weight decay, its clipping). Every other field shapes the batches or
#: the schedule, which the designs of a pack share.
PER_DESIGN_REGIME = ("lr", "weight_decay", "grad_clip")


def _options(spec: TrialSpec) -> dict:
    if spec.plan is not None:
        return spec.plan.get("options") or {}
    return spec.options


def shared_identity(spec: TrialSpec) -> dict | None:
    """What every design of a pack must share with ``spec``, or None when ``spec`` trains alone.

    Alone: an S3PET search (its own loop), and LoRA dropout, whose masks come from the process's
    global generator (a pack would interleave the designs' draws).
    """
    if spec.kind != "train" or float(_options(spec).get("lora_dropout") or 0.0) > 0.0:
        return None
    regime = {k: v for k, v in spec.regime.to_dict().items() if k not in PER_DESIGN_REGIME}
    return {
        "backbone": spec.backbone,
        "backbone_id": spec.backbone_id,
        "role_map": spec.role_map,
        "task": spec.task,
        "data_id": spec.data_id,
        "data_dir": spec.data_dir,
        "data_seed": spec.data_seed,
        "eval_split": spec.eval_split,
        "n_select": spec.n_select,
        "regime": regime,
    }


def pack_key(spec: TrialSpec) -> str | None:
    """Specs with equal keys may train in one pass; None: this spec trains alone."""
    shared = shared_identity(spec)
    return None if shared is None else json.dumps(shared, sort_keys=True, default=str)


def check_pack(specs: list[TrialSpec]) -> None:
    """Refuse, in one line, a pack whose specs do not share what a pass shares (:func:`shared_identity`)."""
    if not specs:
        raise DesignSpaceError("a pack needs at least one spec")
    if len(specs) == 1:
        return
    first = shared_identity(specs[0])
    for i, spec in enumerate(specs):
        shared = shared_identity(spec)
        if shared is None:
            why = {"search": "an S3PET search", "full": "full fine-tuning"}.get(spec.kind) or "LoRA dropout (lora_dropout > 0)"
            raise DesignSpaceError(
                f"pack spec {i} ({spec.label or spec.design_id}) trains alone: {why}; run it with run_spec or pack=1"
            )
        if shared != first:
            field = next(k for k in first if shared.get(k) != first.get(k))
            if field == "regime":
                field = "regime." + next(k for k in first["regime"] if shared["regime"].get(k) != first["regime"].get(k))
            raise DesignSpaceError(
                f"pack spec {i} ({spec.label or spec.design_id}) differs from spec 0 in {field}; the designs of "
                "a pack must share backbone, role map, task, data, data_seed, evaluation split and the regime's "
                f"data and schedule (all but {', '.join(PER_DESIGN_REGIME)})"
            )


def group_packs(specs: list[TrialSpec], k: int) -> list[list[TrialSpec]]:
    """``specs`` in packs of at most ``k`` that may share a pass, in order of first appearance.

    A group of n compatible specs is cut into ceil(n / k) packs of near-equal sizes (5 specs at k=4:
    3 + 2, not 4 + 1), so that packs running side by side finish together.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        from .errors import invalid

        raise invalid("pack", k, "an integer >= 1")
    groups: dict[str, list[TrialSpec]] = {}
    packs: list[list[TrialSpec]] = []
    for spec in specs:
        key = pack_key(spec) if k > 1 else None
        if key is None:
            packs.append([spec])
            continue
        if key not in groups:
            groups[key] = []
            packs.append(groups[key])  # the group's place in the order; cut below
        groups[key].append(spec)
    out = []
    for pack in packs:
        n_packs = math.ceil(len(pack) / k)
        sizes = [len(pack) // n_packs + (i < len(pack) % n_packs) for i in range(n_packs)]
        start = 0
        for size in sizes:
            out.append(pack[start:start + size])
            start += size
    return out


# --- memory -----------------------------------------------------------------------------------------
#: A worker process before any trial, weights aside: Python, torch, transformers, tokenizers, the data.
PROCESS_MB = 500.0
#: Bytes kept per token, layer and unit of width (hidden + FFN) while a pack trains: the activations
#: saved for the backward pass and the step's transients. Measured on MiniLM-L6, SST-2, K = 1 and 8 at
#: one thread: +276 MiB per design for batches of up to 57 tokens, i.e. 26 bytes; 40 leaves room for
#: the allocator's slack.
TRAIN_BYTES = 40
#: The same for evaluation (inference: one layer's transients at a time). On a CPU a pack evaluates
#: ``eval_batch_size`` rows per pass whatever K (``train_pack.eval_regime``).
EVAL_BYTES = 16


def backbone_config(name: str) -> dict:
    """The backbone's config.json as a dict (a short name, a local folder or a hub id in the cache)."""
    from pathlib import Path

    from .backbones.offline import resolve_backbone_path

    return json.loads((Path(resolve_backbone_path(name)) / "config.json").read_text())


def pack_memory_mb(spec: TrialSpec, k: int, config: dict | None = None) -> float:
    """An upper estimate of a CPU worker's peak memory (MiB) while it trains a pack of ``k`` specs like
    ``spec``: process + fp32 weights + the larger of training and evaluation.

    Training keeps k x batch_size rows of up to ``max_length`` tokens in every layer; evaluation one
    layer's worth of ``eval_batch_size`` rows. Real batches are shorter than ``max_length`` (SST-2's
    longest has 57 tokens of 128), so real peaks sit below: MiniLM-L6, K = 8 peaked at 2.8 GiB where
    this says 8.1. On a GPU the activations live in the GPU's memory: choose K by it (the benchmark
    prints the peak per K).
    """
    c = config or backbone_config(spec.backbone)
    d = c.get("hidden_size") or c.get("d_model") or c.get("n_embd")
    ff = c.get("intermediate_size") or c.get("d_ff") or c.get("n_inner") or 4 * d
    layers = c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers") or 1
    if c.get("is_encoder_decoder"):
        layers += c.get("num_decoder_layers") or layers
    vocab = c.get("vocab_size") or 0
    weights = 4 * (layers * (4 * d * d + 2 * d * ff) + vocab * d)
    r = spec.regime
    train = k * r.batch_size * r.max_length * layers * (d + ff) * TRAIN_BYTES
    evaluate = r.eval_batch_size * r.max_length * (d + ff) * EVAL_BYTES
    return PROCESS_MB + (weights + max(train, evaluate)) / 2**20


def available_memory_mb() -> float | None:
    """Memory this host can still give (MemAvailable), or None where it cannot be read."""
    try:
        import psutil

        return psutil.virtual_memory().available / 2**20
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
