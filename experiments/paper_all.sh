#!/usr/bin/env bash
# Issue 16, every run in order (each resumable: rerun this script to continue where it stopped).
#   ranking fidelity (~0.5 h) -> the refinement (~3 h) -> the final comparison (~2 h) -> transfer (~1 h)
# on 2 cores; logs in runs/paper_all.log. The final comparison and transfer read the discovered design
# from results/paper_minilm/design.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p runs
{
  echo "== $(date -u +%FT%TZ) ranking fidelity"; $PY experiments/ranking_fidelity.py
  echo "== $(date -u +%FT%TZ) refinement"; $PY -m designspace.cli refine experiments/paper_minilm.yaml
  $PY -m designspace.cli plot results/paper_minilm
  echo "== $(date -u +%FT%TZ) final comparison"; $PY experiments/final_comparison.py --check-chance --cola
  echo "== $(date -u +%FT%TZ) transfer"; $PY experiments/transfer.py
  echo "== $(date -u +%FT%TZ) done"
} 2>&1 | tee -a runs/paper_all.log
