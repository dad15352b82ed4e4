"""vLLM on a CUDA GPU (skipped without one): ready for a GPU machine, e.g.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/gpu -q

(beside `test_hf_engines_gpu.py`, the HF engine tests on CUDA in fp32 and bf16).

The embedded pair in fp32, both engines on one GPU (each with its share of its memory), the
same checks the CPU tests make, plus tensor parallelism where two GPUs are visible.
"""

import json

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("vllm")  # a GPU machine without vLLM still runs test_hf_engines_gpu.py
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ["backend=vllm", "pilot.vllm.gpu_memory_utilization=0.25", "base.vllm.gpu_memory_utilization=0.35",
       "pilot.device=cuda", "base.device=cuda", "benchmark=alpaca_eval", "benchmark.limit=8", "logger=none"]


@pytest.fixture(scope="module")
def resolved():
    from tests.conftest import compose

    return OmegaConf.to_container(compose(GPU), resolve=True)


@pytest.fixture(scope="module")
def engines(resolved):
    from pipelines import generate
    from wsd.backends.engines import load_engine
    from wsd.backends.models import ModelSpec

    served = tuple(generate.POOL.engine(ModelSpec.from_config(resolved[r]), resolved["backend"], resolved["model_cache_dir"])
                   for r in ("pilot", "base"))
    eager = tuple(load_engine(ModelSpec.from_config(resolved[r]), {"name": "hf"}, resolved["model_cache_dir"])
                  for r in ("pilot", "base"))
    return served, eager


def test_wsd_on_vllm_matches_its_reference_and_hf(engines, resolved):
    from wsd.data.prompt_sets import load_benchmark
    from wsd.weak_to_strong.batched import FastOptions
    from wsd.weak_to_strong.on_vllm import ChunkedWSD
    from wsd.weak_to_strong.reference import ReferenceWSD
    from wsd.weak_to_strong.switch import WSDSettings

    (vpilot, vbase), (hpilot, hbase) = engines
    prompts = load_benchmark(resolved["benchmark"])
    settings = WSDSettings(window=6, threshold=0.8, draft_max_tokens=64, target_max_tokens=128)
    runs = {"fast": ChunkedWSD(vpilot, vbase, settings, FastOptions(batch_size=8)),
            "reference": ReferenceWSD(vpilot, vbase, settings, batch_size=8),
            "hf": ReferenceWSD(hpilot, hbase, settings)}
    out = {k: [(r["keep_count"], r["response"]) for _, r in m.generate_many(prompts)] for k, m in runs.items()}
    assert out["fast"] == out["reference"]
    same = sum(a == b for a, b in zip(out["reference"], out["hf"]))
    assert same >= 6, f"vLLM and HF agree on {same} of 8 prompts (GPU kernels differ in rounding)"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensor_parallel_base_writes_what_one_gpu_writes(engines, resolved):
    import dataclasses

    from wsd.backends.decoding import base_texts, encode
    from wsd.backends.models import ModelSpec
    from wsd.backends.vllm_engine import VLLMEngine

    (_, vbase), _ = engines
    spec = ModelSpec.from_config(resolved["base"])
    spec = dataclasses.replace(spec, vllm={**(spec.vllm or {}), "tensor_parallel_size": 2,
                                           "gpu_memory_utilization": 0.3})
    tp2 = VLLMEngine.prepare(spec, {**resolved["backend"], "in_process": False}, resolved["model_cache_dir"])
    ids = [encode(vbase.tokenizer, base_texts(vbase, [{"role": "user", "content": q}])[0])
           for q in ("Name three colors.", "What is the capital of France?")]
    assert [g.ids for g in tp2.generate(ids, [32, 32], [])] == [g.ids for g in vbase.generate(ids, [32, 32], [])]
    tp2.close()


def test_the_generate_stage_on_the_gpu(engines, tmp_path):
    from pipelines import generate
    from tests.conftest import compose

    summary = generate.run(compose([*GPU, f"output_root={tmp_path}", "method=wsd"]))
    records = [json.loads(line) for line in open(summary["records"])]
    assert len(records) == 8 and all(r["response"].strip() for r in records)
