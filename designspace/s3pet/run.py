"""One search as one trial: ``search_record(spec, backbone)`` for the pool's :class:`TrainScorer`."""

from __future__ import annotations

import time
import traceback

from ..errors import DesignSpaceError, invalid
from ..trial import Status, TrialRecord, TrialSpec


def search_record(spec: TrialSpec, backbone) -> TrialRecord:
    """Run the search of ``spec`` (kind ``search``) on ``backbone``; never raises for the search's own
    failure. The record's ``result`` holds the structure found (``plan``), the gates (``alpha``,
    ``p``, ``chosen``), p over the steps (``p_history``), the entropy of p (``history``) and the
    heat map (``heatmap``); ``seconds_train`` is the whole search's time."""
    from ..train import peak_memory_mb, torch_threads, versions
    from .config import SearchConfig
    from .search import search

    if spec.kind != "search":
        raise invalid("spec.kind", spec.kind, "search (search_record runs S3PET searches)")
    device = next(backbone.model.parameters()).device
    record = TrialRecord(spec, Status.OK, versions=versions(), device=str(device))
    t0 = time.perf_counter()
    with torch_threads(spec.regime.threads):
        try:
            config = SearchConfig.from_dict(spec.search)
            res = search(backbone, spec.task, spec.budget, config, seed=spec.seed, data_seed=spec.data_seed,
                         regime=spec.regime, data_dir=spec.data_dir)
            record.result = res.to_result()
            record.plan_params = res.plan.params
            record.trainable_params = record.result["pool_params"]
            record.n_train = res.n_train
            record.steps = res.steps["warmup"] + res.steps["search"]
            last = [h for h in res.history if h["phase"] == "search"]
            record.final_loss = last[-1]["loss_gates"] if last else None
            record.metrics = {"entropy": last[-1]["entropy"], "decided": last[-1]["decided"]} if last else {}
        except DesignSpaceError as e:
            record.status, record.error = Status.INFEASIBLE, str(e)
        except FloatingPointError as e:
            record.status, record.error = Status.DIVERGED, str(e)
        except Exception as e:  # a failed search is a result, recorded with its traceback
            record.status, record.error = Status.FAILED, f"{type(e).__name__}: {e}"
            record.traceback = traceback.format_exc()
        finally:
            record.seconds_train = time.perf_counter() - t0
            record.peak_mem_mb = peak_memory_mb(device)
    return record
