"""What a worker does with a spec: train it (:class:`TrainScorer`), or, in tests and calibration
runs, draw its score from a known truth plus noise (:class:`SyntheticScorer`). Both go through the
same pool, store and refiner; only the number differs."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Protocol

from ..trial import Status, TrialRecord, TrialSpec


class Scorer(Protocol):
    """Turns a spec into its record; must never raise for the trial's own failure, and must pickle.

    A scorer may also have ``pack(specs) -> [records]``: the specs of one pack (``designspace.pack``),
    scored in one call, one record per spec in order; without it a pack's specs are scored one by one.
    """

    def __call__(self, spec: TrialSpec) -> TrialRecord: ...


# One backbone per (name, role map) per process: loky and dask workers live across trials, so a stage
# pays the load (seconds for MiniLM, more for bigger models) once per worker, not once per trial.
_BACKBONES: dict[str, object] = {}


class TrainScorer:
    """Train the spec on its backbone (loaded once per worker) and score it (an S3PET search for kind
    ``search``, every weight of a copy for kind ``full``); ``pack``: train the specs of a pack in one
    pass (``train_pack.run_pack``)."""

    def __call__(self, spec: TrialSpec) -> TrialRecord:
        from ..train import run_spec

        if spec.kind == "search":  # an S3PET search: its record carries the structure it found
            from ..s3pet.run import search_record

            return self._on_backbone(spec, lambda backbone: search_record(spec, backbone))
        if spec.kind == "full":  # full fine-tuning trains a copy of the worker's backbone
            from ..full import run_full

            return self._on_backbone(spec, lambda backbone: run_full(spec, backbone))
        return self._on_backbone(spec, lambda backbone: run_spec(spec, backbone))

    def pack(self, specs: list[TrialSpec]) -> list[TrialRecord]:
        from ..train_pack import run_pack

        return self._on_backbone(specs[0], lambda backbone: run_pack(specs, backbone))

    @staticmethod
    def _on_backbone(spec: TrialSpec, work):
        import json

        from ..attach import is_clean
        from ..backbones import load_backbone

        name = spec.backbone + "|" + json.dumps(spec.role_map, sort_keys=True)
        if name not in _BACKBONES:
            _BACKBONES[name] = load_backbone(spec.backbone, role_map=spec.role_map)
        backbone = _BACKBONES[name]
        try:
            return work(backbone)
        finally:
            if not is_clean(backbone):  # the next trial must not train on top of this one's modules
                _BACKBONES.pop(name, None)

    @staticmethod
    def memory_mb(specs: list[TrialSpec]) -> float | None:
        """A worker's peak memory while it trains ``specs`` as one pack (``pack.pack_memory_mb``), or
        None when the backbone's config cannot be read here."""
        from ..pack import pack_memory_mb

        try:
            return pack_memory_mb(specs[0], len(specs))
        except (OSError, ValueError):
            return None

    def __repr__(self) -> str:
        return "TrainScorer()"


def _unit_normal(*parts) -> float:
    """A standard normal draw that depends on ``parts`` only (Box-Muller on two hash-derived uniforms)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    u1 = (int.from_bytes(h[:8], "little") + 0.5) / 2**64
    u2 = (int.from_bytes(h[8:16], "little") + 0.5) / 2**64
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@dataclass(frozen=True)
class SyntheticScorer:
    """A known truth plus noise, in points: ``base + sum of component effects + design deviation +
    seed noise``. Effects: ``{"grouping": {"spindle": 1.0}, "strategies": {"lora": 0.5}, ...}``;
    a strategy's effect counts once per tuned group whose set holds it (divided by the group count).

    ``noise_sd`` is the seed-to-seed sd of one design; ``shared`` the part of it common to every design
    trained with the same seed and data (common random numbers, as a correlation); ``design_sd`` a fixed
    per-design deviation (what the additive effects do not explain); ``task_noise`` a seed sd per task
    in place of ``noise_sd`` (tasks whose scores swing more than others'). Designs in ``crash`` kill their
    worker, in ``fail`` raise, in ``diverge`` diverge: the pool's failure paths, without training.
    """

    effects: dict = field(default_factory=dict)
    base: float = 80.0
    noise_sd: float = 0.8
    shared: float = 0.0
    design_sd: float = 0.0
    task_noise: dict = field(default_factory=dict)
    crash: tuple[str, ...] = ()
    fail: tuple[str, ...] = ()
    diverge: tuple[str, ...] = ()
    salt: str = ""

    def truth(self, spec: TrialSpec) -> float:
        """The expected score of the spec's design (points), without seed noise."""
        d = spec.design
        if d is None:
            return self.base
        e = self.effects
        value = self.base + e.get("grouping", {}).get(d.grouping, 0.0) + e.get("allocation", {}).get(d.allocation, 0.0)
        value += e.get("tuned_groups", {}).get(",".join(map(str, d.tuned_groups)), 0.0)
        per = e.get("strategies", {})
        for g in d.tuned_groups:
            value += sum(per.get(s, 0.0) for s in d.strategies[g - 1]) / d.n_groups
        for g in range(1, d.n_groups + 1):
            if g in d.tuned_groups:
                value += e.get(f"strategies.G{g}", {}).get(",".join(d.strategies[g - 1]), 0.0)
        if self.design_sd:
            value += self.design_sd * _unit_normal(self.salt, "design", d.id, spec.task)
        return value

    def pack(self, specs: list[TrialSpec]) -> list[TrialRecord]:
        """A pack's records: each spec's own (a crash design still takes the whole worker down)."""
        return [self(spec) for spec in specs]

    def __call__(self, spec: TrialSpec) -> TrialRecord:
        design_id = spec.design_id
        if design_id in self.crash:
            os._exit(1)  # what a segfault or the OOM killer does to a worker
        if design_id in self.fail:
            return TrialRecord(spec, Status.FAILED, error="RuntimeError: synthetic failure")
        if design_id in self.diverge:
            return TrialRecord(spec, Status.DIVERGED, error="loss became nan (synthetic)")
        rho = min(max(self.shared, 0.0), 1.0)
        common = _unit_normal(self.salt, "seed", spec.seed, spec.data_seed, spec.task)
        own = _unit_normal(self.salt, "trial", spec.key)
        sd = self.task_noise.get(spec.task, self.noise_sd)
        points = self.truth(spec) + sd * (math.sqrt(rho) * common + math.sqrt(1 - rho) * own)
        return TrialRecord(spec, Status.OK, score=points / 100.0, metrics={"synthetic": points / 100.0}, device="none")
