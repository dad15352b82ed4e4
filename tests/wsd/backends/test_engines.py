"""The model pool: what a running method holds is never closed under it."""

import pytest

from wsd.backends import engines
from wsd.backends.models import ModelSpec


class FakeEngine:
    def __init__(self, spec):
        self.spec, self.closed = spec, False

    def close(self):
        self.closed = True


@pytest.fixture
def loads(monkeypatch) -> list:
    made = []

    def load(spec, backend, cache_dir):
        made.append(FakeEngine(spec))
        return made[-1]

    monkeypatch.setattr(engines, "load_engine", load)
    return made


def spec(name: str) -> ModelSpec:
    return ModelSpec.from_config({"name": name, "path": f"/models/{name}"})


CFG = {"backend": {"name": "vllm"}, "model_cache_dir": "/cache", "generation": {"chunk_tokens": 16}}


def test_a_method_that_needs_more_models_than_the_pool_holds_keeps_them_all(loads):
    """Aligner over WSD: pilot, base and corrector in a pool of 2 (the corrector evicted, and
    on vLLM closed, the pilot the method still held)."""
    pool = engines.ModelPool(size=2)
    held = pool.engines({"pilot": spec("p"), "base": spec("b"), "corrector": spec("c")}, CFG)
    assert [e.spec.name for e in held.values()] == ["p", "b", "c"] and not any(e.closed for e in held.values())
    # a judge loading its own model while the method runs (GenerAlign's scorer) evicts nothing held
    judge = pool.engine(spec("j"), CFG["backend"], "/cache")
    assert not any(e.closed for e in held.values()) and pool.loaded == 4
    # the next method's engines replace the held ones; the next load evicts the least recently used
    nxt = pool.engines({"pilot": spec("p"), "base": spec("b")}, CFG)
    assert nxt["pilot"] is held["pilot"] and nxt["base"] is held["base"]
    assert pool.loaded == 4 and judge.closed is False  # nothing new loaded, nothing evicted
    pool.engines({"base": spec("x")}, CFG)
    assert sorted(e.spec.name for e in loads if e.closed) == ["c", "j", "p"]
    assert pool.loaded == 2 and not held["base"].closed
