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

.PHONY: install run test test-fast lint format bench pretrain-base study-gui pretrain-base-shapes study-shapes pretrain-base-shapes-fmt study study-shapes-fmt study-long pretrain-base-shapes-point study-shapes-point study-shapes-point-long study-shapes-point-known clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned in the same command so pip never resolves a CUDA build on a CPU machine.
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/imagelora-dist run

test: $(STAMP)  # everything, as CI runs it
	$(PY) -m pytest

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

study: pretrain-base-shapes-fmt  # the fidelity study (shapes screens, format-aware base; ~1 h on 2 CPU cores; done cells are skipped), then reports/study.md
	$(VENV)/bin/imagelora-dist study configs/study/shapes_fmt.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml \
		tracking.experiment=imagelora-study-shapes-fmt --out reports

study-long: pretrain-base-shapes-fmt  # the study's trained cells at 4x the steps (~2 h), then reports/study-long/study.md
	$(VENV)/bin/imagelora-dist study configs/study/shapes_fmt_long.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml \
		tracking.experiment=imagelora-study-shapes-fmt-long --out reports/study-long

study-shapes-fmt: study  # the same study under its descriptive name

pretrain-base-shapes-fmt: $(STAMP)  # the study's base: sees shapes, knows the answer formats (runs/pretrain-base-shapes-fmt/base, ~30 min)
	$(VENV)/bin/imagelora-dist pretrain-base --no-ray --config configs/pretrain_base_shapes_fmt.yaml

pretrain-base-shapes-point: $(STAMP)  # a shapes base that points: the study's tasks only, 4,000 steps (runs/pretrain-base-shapes-point/base, ~54 min on 2 cores)
	$(VENV)/bin/imagelora-dist pretrain-base --no-ray --config configs/pretrain_base_shapes_point.yaml

study-shapes-point: pretrain-base-shapes-point  # the study on the base that points (~1 h on 2 CPU cores), then reports/study-shapes-point/study.md
	$(VENV)/bin/imagelora-dist study configs/study/shapes_point.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml \
		tracking.experiment=imagelora-study-shapes-point --out reports/study-shapes-point

study-shapes-point-long: pretrain-base-shapes-point  # its trained cells at 4x the steps (not run yet), then reports/study-shapes-point-long/study.md
	$(VENV)/bin/imagelora-dist study configs/study/shapes_point_long.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml \
		tracking.experiment=imagelora-study-shapes-point-long --out reports/study-shapes-point-long

study-shapes-point-known: pretrain-base-shapes-point  # the same study asked in the pre-training's words (a task the base knows, as in the paper), then reports/study-shapes-point-known/study.md
	$(VENV)/bin/imagelora-dist study configs/study/shapes_point_known.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml \
		tracking.experiment=imagelora-study-shapes-point-known --out reports/study-shapes-point-known

pretrain-base-shapes: $(STAMP)  # a shapes base that has never written the answer formats (runs/pretrain-base-shapes/base)
	$(VENV)/bin/imagelora-dist pretrain-base --no-ray --config configs/pretrain_base_shapes.yaml

study-shapes: pretrain-base-shapes  # the study on that base (~1 h on 2 CPU cores), then reports/study-shapes/study.md
	$(VENV)/bin/imagelora-dist study configs/study/shapes.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml \
		tracking.experiment=imagelora-study-shapes --out reports/study-shapes

pretrain-base: $(STAMP)  # the GUI-screens base, runs/pretrain-base/base (skipped when done)
	$(VENV)/bin/imagelora-dist pretrain-base --config configs/pretrain_base.yaml

study-gui: pretrain-base  # the study on GUI screens (the base cannot read them: cost and text preservation only), then reports/study-gui/study.md
	$(VENV)/bin/imagelora-dist study configs/study/study.yaml
	$(VENV)/bin/imagelora-dist compare --config configs/study/finetune.yaml tracking.experiment=imagelora-study \
		--out reports/study-gui

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info runs
