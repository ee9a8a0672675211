"""Tokenised task data and length-bucketed batches with dynamic padding."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from .tasks import TaskSpec, get_task, load_task_dataset, subsample

# Per-process memo: a worker that runs many trials on one task tokenises each split once.
_TOKENISED: dict[tuple, list] = {}
_SPLITS: dict[tuple, object] = {}


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    label: float
    idx: int


#: The selection split is carved from train with this seed, whatever the data seed: every trial of an
#: experiment is scored on the same examples, and no trial ever trains on them.
SELECTION_SEED = 20230501


def split_dataset(task: TaskSpec, split: str, data_dir=None, hub: bool = False, n_select: int = 0):
    """A split as a dataset: 'dev', 'select' (``n_select`` examples carved from train) or 'train'
    (train without the selection examples)."""
    key = (task.name, split, str(data_dir), hub, n_select)
    if key not in _SPLITS:
        if split == "dev":
            _SPLITS[key] = load_task_dataset(task, "dev", data_dir=data_dir, hub=hub)
        else:
            train = _train(task, data_dir, hub)
            if not n_select:
                _SPLITS[key] = train
            else:
                if n_select >= len(train):
                    from .errors import invalid

                    raise invalid("selection", n_select, f"fewer than the {len(train)} training examples of {task.name}")
                chosen = subsample(train, n_select, seed=SELECTION_SEED, stratify=not task.is_regression)
                if split == "select":
                    _SPLITS[key] = chosen
                else:
                    ids = train.with_format("numpy")["idx"][:]  # one array: iterating the column reads rows
                    _SPLITS[key] = train.select(np.flatnonzero(~np.isin(ids, chosen["idx"][:])).tolist())
    return _SPLITS[key]


def _train(task: TaskSpec, data_dir, hub: bool):
    key = (task.name, "train", str(data_dir), hub, None)
    if key not in _SPLITS:
        _SPLITS[key] = load_task_dataset(task, "train", data_dir=data_dir, hub=hub)
    return _SPLITS[key]


def tokenise(
    task: str | TaskSpec,
    split: str,
    tokenizer,
    max_length: int,
    n: int | None = None,
    seed: int = 0,
    data_dir=None,
    hub: bool = False,
    n_select: int = 0,
) -> list[Example]:
    """The split (or a seeded, stratified subsample of ``n``) as token ids, truncated to ``max_length``.

    ``split``: 'train', 'dev' or 'select'; with ``n_select`` > 0 the selection examples are carved
    from train first, and 'train' never holds them."""
    spec = get_task(task)
    ds = split_dataset(spec, split, data_dir, hub, n_select)
    if n is not None and n < len(ds):
        ds = subsample(ds, n, seed=seed, stratify=not spec.is_regression)
    key = (spec.name, split, getattr(tokenizer, "name_or_path", id(tokenizer)), max_length, tuple(ds["idx"]))
    if key in _TOKENISED:
        return _TOKENISED[key]
    a = list(ds["text_a"])
    b = list(ds["text_b"]) if "text_b" in ds.column_names and ds[0]["text_b"] is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length) if b else tokenizer(a, truncation=True, max_length=max_length)
    out = [Example(tuple(ids), float(lab), int(i)) for ids, lab, i in zip(enc["input_ids"], list(ds["label"]), list(ds["idx"]), strict=True)]
    _TOKENISED[key] = out
    return out


def length_bucketed_batches(
    examples: list[Example], batch_size: int, seed: int, shuffle: bool = True, bucket: int = 50
) -> list[list[Example]]:
    """Batches of similar lengths (little padding) in a seeded random order.

    Shuffle, cut into mega-batches of ``bucket`` batches, sort each by length, cut into batches and
    shuffle the batches: the run_glue alternative pads everything to 128 and wastes most FLOPs.
    """
    order = list(range(len(examples)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    else:
        order.sort(key=lambda i: len(examples[i].input_ids))
    mega = batch_size * (bucket if shuffle else len(order) + 1)
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: len(examples[i].input_ids))
        batches += [[examples[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def epoch_batches(
    examples: list[Example], batch_size: int, epochs: float, seed: int, max_steps: int | None = None
) -> list[list[Example]]:
    """The training batches: whole epochs (epoch ``e`` shuffled with ``seed + e``), cut to ``epochs``."""
    per_epoch = [length_bucketed_batches(examples, batch_size, seed + e) for e in range(math.ceil(epochs))]
    batches = [b for eb in per_epoch for b in eb][: max(1, round(epochs * len(per_epoch[0])))]
    return batches[:max_steps] if max_steps else batches


def collate(batch: list[Example], pad_id: int, device, regression: bool) -> dict[str, torch.Tensor]:
    """Right-padded tensors: the decoder head reads the last non-padding token."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[r, : len(e.input_ids)] = 1
    labels = torch.tensor([e.label for e in batch], dtype=torch.float if regression else torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
