"""The vLLM backend's settings and checks, without starting an engine: what the paper's
GPU runs would start is composed and checked here."""

import os
import signal
import subprocess
import sys
import time

import pytest

from wsd.backends import vllm_engine
from wsd.backends.models import ModelSpec
from wsd.backends.vllm_engine import VLLMEngine, VLLMSettings, check_parallelism
from wsd.methods import compose
from wsd.runs import identity


@pytest.mark.parametrize("block, message", [({"tensor_parallel": 2}, "unknown vllm setting"),
                                            ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
                                            ({"max_model_len": 1}, "max_model_len"),
                                            ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
                                            ({"engine_args": {"dtype": "half"}}, "repeats")])
def test_bad_engine_settings_are_named(block, message):
    with pytest.raises(ValueError, match=message):
        VLLMSettings.from_config("m", block)


@pytest.mark.parametrize("gpus, block, fits", [
    (0, {"tensor_parallel_size": 2}, False),
    (8, {"tensor_parallel_size": 8}, True),
    (4, {"tensor_parallel_size": 8}, False),
    (8, {"tensor_parallel_size": 8, "pipeline_parallel_size": 2}, False),
    (8, {"tensor_parallel_size": 8, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}, True),
    (0, {}, True),
])
def test_parallelism_must_fit_the_gpus_of_this_node(monkeypatch, gpus, block, fits):
    monkeypatch.setattr(vllm_engine, "_gpus", lambda: gpus)
    settings = VLLMSettings.from_config("m", block)
    if fits:
        check_parallelism("m", settings)
    else:
        with pytest.raises(ValueError, match="GPU"):
            check_parallelism("m", settings)


def test_without_vllm_the_message_names_the_set_up(monkeypatch):
    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="make setup"):
        VLLMEngine.prepare(ModelSpec.from_config({"name": "m", "path": "/nowhere"}), {"name": "vllm"}, "/tmp")


def engine_args(cfg, role: str) -> dict:
    spec = ModelSpec.from_config(cfg[role])
    return VLLMEngine(spec, spec.path, VLLMSettings.from_config(spec.name, spec.vllm), dict(cfg.backend), None, [],
                      None).engine_args()


@pytest.mark.parametrize("experiment", ["paper_llama3_70b", "paper_llama31_70b", "paper_gemma2_27b"])
def test_paper_experiments_put_the_base_on_a_node_and_the_pilot_beside_it(monkeypatch, experiment):
    cfg = compose([f"experiment={experiment}"], "reproduce")
    assert cfg.backend.name == "vllm" and cfg.backend.in_process is False
    base, pilot = engine_args(cfg, "base"), engine_args(cfg, "pilot")
    assert (base["tensor_parallel_size"], base["dtype"], base["enforce_eager"]) == (8, "bfloat16", False)
    assert base["model"] == cfg.base.path and pilot["model"] == "songff/Pilot-3B"
    assert pilot.get("tensor_parallel_size", 1) == 1
    assert base["gpu_memory_utilization"] + pilot["gpu_memory_utilization"] <= 0.95  # GPU 0 holds both
    monkeypatch.setattr(vllm_engine, "_gpus", lambda: 8)
    for role in ("base", "pilot"):
        check_parallelism(role, VLLMSettings.from_config(role, cfg[role].vllm))


def test_the_multi_node_command_composes_and_fits(monkeypatch):
    """README: two 8-GPU nodes under Ray, the base pipeline-parallel across them."""
    cfg = compose(["experiment=paper_llama3_70b", "base.vllm.pipeline_parallel_size=2",
                   "base.vllm.distributed_executor_backend=ray"], "reproduce")
    args = engine_args(cfg, "base")
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"], args["distributed_executor_backend"]) == \
        (8, 2, "ray")
    monkeypatch.setattr(vllm_engine, "_gpus", lambda: 8)
    check_parallelism("base", VLLMSettings.from_config("base", cfg.base.vllm))


def test_run_folders_are_keyed_by_the_backend_in_use():
    def folder(overrides):
        return identity.generation(compose(overrides)).folder

    hf = folder([])
    assert folder(["base.vllm.max_model_len=1234"]) == hf  # vllm settings unused on hf
    on_vllm = folder(["backend=vllm"])
    assert on_vllm != hf
    assert folder(["backend=vllm", "base.vllm.max_model_len=1234"]) != on_vllm


def test_an_unknown_backend_is_named():
    from wsd.backends.engines import check_backend

    with pytest.raises(ValueError, match="accepted: hf, vllm"):
        check_backend({"name": "sglang"})
    with pytest.raises(ValueError, match="unknown backend.scheduling 'per-request'; accepted: batched, per_request"):
        check_backend({"name": "vllm", "scheduling": "per-request"})



_HOLDS_A_CHILD = """
import atexit, subprocess, sys, time
from wsd.backends.vllm_engine import exit_cleanly_on_sigterm
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
atexit.register(child.kill)  # as vLLM's exit handlers stop its engine-core processes
if sys.argv[1] == "handled":
    exit_cleanly_on_sigterm()
print(child.pid, flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its new parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("handled", [True, False])
def test_sigterm_lets_a_process_stop_the_children_it_started(handled):
    """A stage killed with SIGTERM stops its engine cores: its exit handlers run. Left to
    SIGTERM's default, the child outlives its parent."""
    parent = subprocess.Popen([sys.executable, "-c", _HOLDS_A_CHILD, "handled" if handled else "default"],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == (128 + signal.SIGTERM if handled else -signal.SIGTERM)
        deadline = time.monotonic() + 30  # a killed process takes a moment to go
        while handled and _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running(child) is not handled
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)
