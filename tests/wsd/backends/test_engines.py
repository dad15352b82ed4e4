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
    with pool.holding():
        held = pool.engines({"pilot": spec("p"), "base": spec("b"), "corrector": spec("c")}, CFG)
        assert [e.spec.name for e in held.values()] == ["p", "b", "c"] and not any(e.closed for e in held.values())
        # a judge loading its own model while the method runs (GenerAlign's scorer) evicts nothing held
        judge = pool.engine(spec("j"), CFG["backend"], "/cache")
        assert not any(e.closed for e in held.values()) and pool.loaded == 4
    # the method is done: the next load evicts the least recently used, down to the pool's size
    pool.engines({"base": spec("x")}, CFG)
    assert sorted(e.spec.name for e in loads if e.closed) == ["b", "c", "p"] and not judge.closed
    assert pool.loaded == 2


def test_a_finished_methods_engines_do_not_pin_the_pool(loads):
    """After a stage's run, its engines are ordinary entries: loading two others evicts them,
    not the engine loaded just before (a stage's HF pair pinned there evicted the next vLLM
    pilot while its base loaded)."""
    pool = engines.ModelPool(size=2)
    with pool.holding():
        first = pool.engines({"pilot": spec("p"), "base": spec("b")}, CFG)
    pilot = pool.engine(spec("vp"), CFG["backend"], "/cache")
    pool.engine(spec("vb"), CFG["backend"], "/cache")
    assert first["pilot"].closed and first["base"].closed and not pilot.closed
