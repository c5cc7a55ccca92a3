# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export RAY_USAGE_STATS_ENABLED := 0
# DeepSpeed's accelerator: cuda where an NVIDIA GPU is visible, else cpu (set it yourself to override).
export DS_ACCELERATOR ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint format bench smoke-3b clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned in the same command so pip never resolves a CUDA build on a CPU machine.
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/imagelora-dist run

# The multi-node tests run in a process of their own: their driver joins a cluster without token auth,
# and Ray keeps a process's auth mode once loaded, so a later local (token) Ray in the same process fails.
MULTINODE := tests/integration/test_multinode.py

test: $(STAMP)  # everything, as CI runs it
	$(PY) -m pytest --ignore=$(MULTINODE)
	$(PY) -m pytest $(MULTINODE)

test-fast: $(STAMP)  # the unit tests only: no Ray cluster, DeepSpeed run, k8s job or whole pipeline (a few minutes)
	$(PY) -m pytest -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)  # the suite rewrites its section of bench/RESULTS.md; run it on an otherwise idle machine
	$(PY) bench/suite.py
	$(PY) bench/step_time.py
	$(PY) bench/loader.py
	$(PY) bench/probe_scaling.py
	$(PY) bench/probe_driver_memory.py

smoke-3b: $(STAMP)  # Qwen2.5-VL-3B's real shape (random bf16 weights) end to end on CPU: minutes, ~7 GB disk; bench/out/smoke_3b.json
	$(PY) bench/smoke_3b.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info runs
