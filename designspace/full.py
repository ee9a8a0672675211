"""Full fine-tuning: the reference every PET design is measured against (every backbone weight trains).

The worker's cached backbone stays frozen for the trials after this one: a copy is trained. Dropout
inside the backbone stays off, as in PET training (``fit`` keeps the backbone in eval mode), so the
two differ only in what trains.
"""

from __future__ import annotations

import copy
import time
import traceback

import torch

from .backbones import Backbone
from .model import FrozenBody, new_head
from .tasks import get_task
from .train import (
    evaluate_model,
    fit,
    pad_token_id,
    peak_memory_mb,
    score_record,
    spec_data,
    torch_threads,
    training_batches,
    versions,
)
from .trial import Status, TrialRecord, TrialSpec


class FullModel(FrozenBody):
    """A backbone whose weights train, and the task head."""

    def __init__(self, backbone: Backbone, num_labels: int, seed: int, dropout: float = 0.1):
        super().__init__(backbone)
        self.head = new_head(backbone.hidden_size, num_labels, seed, dropout, next(self.backbone.parameters()).device)

    def forward(self, input_ids, attention_mask, **_):
        return self.head(self.features(input_ids, attention_mask))


def run_full(spec: TrialSpec, backbone: Backbone) -> TrialRecord:
    """Fine-tune every weight of a copy of ``backbone`` on ``spec``'s task; never raises for the trial."""
    task = get_task(spec.task)
    device = next(backbone.model.parameters()).device
    record = TrialRecord(spec, Status.OK, versions=versions(), device=str(device))
    model = None
    with torch_threads(spec.regime.threads):
        try:
            train, evaluated = spec_data(spec, backbone)
            record.n_train, record.n_eval = len(train), len(evaluated)
            weights = copy.deepcopy(backbone.model)
            for p in weights.parameters():
                p.requires_grad_(True)
            clone = Backbone.from_model(weights, name=backbone.name, tokenizer=backbone.tokenizer,
                                        role_map=backbone.role_map)
            model = FullModel(clone, task.num_labels, spec.seed)
            record.trainable_params = sum(p.numel() for p in weights.parameters())
            record.head_params = sum(p.numel() for p in model.head.parameters())
            groups = [{"params": list(weights.parameters()), "lr": spec.regime.lr_for("backbone"), "name": "backbone"},
                      {"params": list(model.head.parameters()), "lr": spec.regime.lr_for("head"), "name": "head"}]
            batches, targets = training_batches(task, spec.regime, train, spec.data_seed)
            torch.manual_seed(spec.seed)
            fit(model, groups, batches, task, spec.regime, record, pad_token_id(backbone), device)
            targets.fold(model.head)
            if record.status is Status.OK:
                t0 = time.perf_counter()
                preds, labels = evaluate_model(model, evaluated, spec.regime, pad_token_id(backbone), task.is_regression,
                                               device)
                record.seconds_eval = time.perf_counter() - t0
                score_record(record, task, preds, labels)
        except Exception as e:
            record.status, record.error = Status.FAILED, f"{type(e).__name__}: {e}"
            record.traceback = traceback.format_exc()
        finally:
            record.peak_mem_mb = peak_memory_mb(device)
            del model
    return record
