"""The public API on the tiny models: what the generate stage writes, from a Python call."""

import json

import pytest

import wsd
from pipelines import generate
from tests.conftest import compose, tiny_overrides

QUESTIONS = ["What is the capital of France?", "How do I bake a cake?", "Tell me a fact."]


@pytest.fixture(scope="module")
def pool():
    from wsd.backends.engines import ModelPool

    return ModelPool()


def tiny(tiny_models, tmp_path, **settings) -> dict:
    return {"pilot": tiny_models["pilot"], "base": tiny_models["base"], "model_cache_dir": str(tmp_path), **settings}


def test_weak_to_strong_answers_as_the_generate_stage_records(tiny_models, tmp_path, pool):
    """Same prompts, same settings: the call's answers are the stage's records."""
    w = wsd.WeakToStrong(**tiny(tiny_models, tmp_path, window=2, threshold=0.3, draft_max_tokens=12), pool=pool)
    answers = w.generate(QUESTIONS, max_new_tokens=20)
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    summary = generate.run(compose(tiny_overrides(tiny_models, tmp_path, "benchmark=jsonl", f"benchmark.path={prompts}",
                                                  "wsd.window=2", "wsd.threshold=0.3")), pool)
    records = [json.loads(line) for line in open(summary["records"])]
    assert [(a.keep_count, a.response) for a in answers] == [(r["keep_count"], r["response"]) for r in records]
    assert any(a.switched for a in answers) and all(a.record["draft_tokens"] == a.draft_tokens for a in answers)
    assert all(a.response_tokens == a.keep_count + a.continuation_tokens for a in answers)
    assert answers[0].messages == [{"role": "user", "content": QUESTIONS[0]}]


def test_every_method_through_the_same_door(tiny_models, tmp_path, pool):
    nudging = wsd.method("nudging", **tiny(tiny_models, tmp_path, threshold=0.5), pool=pool)
    assert nudging.cfg["method"]["threshold"] == 0.5 != nudging.cfg["wsd"]["threshold"]  # the method's own first
    [answer] = nudging.generate([[{"role": "user", "content": "Name a colour."}]], max_new_tokens=12)
    assert answer.keep_count is None and answer.record["handovers"] >= 0 and answer.response_tokens <= 12
    base = wsd.method("base", **tiny(tiny_models, tmp_path), pool=pool)
    assert base.generate(["Hi"], max_new_tokens=5)[0].response_tokens <= 5


def test_bad_settings_are_named_before_any_model_loads(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr("wsd.backends.engines.load_engine", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match="unknown setting 'windw' for method 'wsd'; accepted: .*window"):
        wsd.WeakToStrong(**tiny(tiny_models, tmp_path), windw=3)
    with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\], got 1.5"):
        wsd.WeakToStrong(**tiny(tiny_models, tmp_path), threshold=1.5)
    with pytest.raises(ValueError, match="unknown method 'beam'"):
        wsd.method("beam")
    with pytest.raises(FileNotFoundError, match="folder .*/nowhere' does not exist"):
        wsd.WeakToStrong(pilot=str(tmp_path / "nowhere"), base=tiny_models["base"])
    w = wsd.WeakToStrong(**tiny(tiny_models, tmp_path))
    with pytest.raises(ValueError, match="unknown decoding option"):
        w.generate(["Hi"], max_tokens=3)
    with pytest.raises(ValueError, match="decodes greedily; generation.temperature must be 0"):
        w.generate(["Hi"], temperature=0.7)


def test_importing_a_submodule_stays_light():
    """`import wsd.core.schemas` must not load torch through the public names."""
    import subprocess
    import sys

    code = "import sys, wsd.core.schemas; print('torch' in sys.modules, 'wsd.api' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
