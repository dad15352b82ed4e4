"""The analyze stage on the tiny models: every part from a WSD run and reference answers, the
switch stages through a local stand-in judge, resuming, and bad input before any model loads."""

import json

import pytest

from pipelines import analyze, generate
from tests.conftest import CORPUS, QUESTIONS, tiny_overrides
from wsd.analysis.switch_stages import ANSWER_STAGES
from wsd.backends.engines import ModelPool
from wsd.methods import compose


@pytest.fixture
def reference_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q, "reference": a}) + "\n"
                            for i, (q, a) in enumerate(zip(QUESTIONS, CORPUS))))
    return path


def overrides(tiny_models, tmp_path, prompts, *extra):
    return tiny_overrides(tiny_models, tmp_path, "benchmark=jsonl", f"benchmark.path={prompts}", "method=wsd",
                          "wsd.threshold=0.5", *extra)


def analyzing(tiny_models, tmp_path, prompts, *extra):
    """The analyze stage's config: the generate run's overrides and sizes for the tiny models."""
    return compose(overrides(tiny_models, tmp_path, prompts, "analysis.max_answer_tokens=40",
                             "analysis.prefix_tokens=[0,2,4]", "analysis.continuation_tokens=4",
                             "analysis.continuation_answers=2", "analysis.bootstrap_resamples=200", *extra), "analyze")


def judged(url):
    return [f"analysis.stage_judge.endpoint={url}", "analysis.stage_judge.client.model=judge"]


def test_every_part_from_references_and_a_wsd_run_with_the_judges_stages(tiny_models, tmp_path, reference_file,
                                                                         stand_in, monkeypatch):
    generate.run(compose(overrides(tiny_models, tmp_path, reference_file)))
    url, server = stand_in(lambda body: "Stage: structure" if "1." in body["messages"][0]["content"] else "body")
    summary = analyze.run(analyzing(tiny_models, tmp_path, reference_file, *judged(url)),
                          ModelPool())
    assert summary["items"] == len(QUESTIONS)
    for role in ("base", "pilot"):
        buckets = summary["difficulty"][role]["buckets"]
        assert [b["bucket"] for b in buckets][:3] == ["1-4", "5-8", "9-16"]
        assert sum(b["logprob"]["tokens"] for b in buckets) > len(QUESTIONS) * 8
    curve = summary["prefix"]["curve"]
    assert [p["m"] for p in curve] == [0, 2, 4] and all(p["perplexity"]["mean"] > 1 for p in curve)
    assert all(p["continuation_similarity"]["n"] == 2 for p in curve)
    switches = summary["switches"]
    assert switches["records"] == len(QUESTIONS) and switches["switched"] >= 1
    asked = server.chats()
    assert len(asked) == switches["switched"]
    assert all(name in asked[0]["messages"][0]["content"] for name in ANSWER_STAGES)
    assert switches["judge"]["classified"] == switches["switched"] and switches["judge"]["proxy"]
    assert sum(switches["judge"]["shares"].values()) == pytest.approx(1)
    folder = tmp_path / "outputs" / "analyze" / "jsonl"
    [run] = folder.iterdir()
    assert (run / "analyses.png").exists() and "## Where WSD switches" in (run / "analyses.md").read_text()

    # a rerun reuses every score, continuation and verdict
    monkeypatch.setattr("wsd.backends.engines.HFEngine.token_ranks", lambda *a: pytest.fail("scored again"))
    monkeypatch.setattr("wsd.backends.engines.HFEngine.generate", lambda *a, **k: pytest.fail("generated again"))
    again = analyze.run(analyzing(tiny_models, tmp_path, reference_file, *judged(url)),
                        ModelPool())
    assert len(server.chats()) == len(asked)
    assert again["difficulty"] == summary["difficulty"] and again["prefix"] == summary["prefix"]


def no_model_loads(monkeypatch):
    monkeypatch.setattr(ModelPool, "engines", lambda *a, **k: pytest.fail("a model was loaded"))


def test_answers_without_references_fail_before_any_model_loads(tiny_models, tmp_path, monkeypatch):
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    no_model_loads(monkeypatch)
    with pytest.raises(ValueError, match="has no reference answers to analyse"):
        analyze.run(analyzing(tiny_models, tmp_path, plain))


def test_the_switches_part_needs_a_finished_wsd_run(tiny_models, tmp_path, reference_file, monkeypatch):
    no_model_loads(monkeypatch)
    with pytest.raises(FileNotFoundError, match="no finished generation run"):
        analyze.run(analyzing(tiny_models, tmp_path, reference_file))
    with pytest.raises(ValueError, match="analysis.parts must name some of"):
        analyze.run(analyzing(tiny_models, tmp_path, reference_file, "analysis.parts=[curves]"))


def test_an_empty_answer_of_a_generate_run_fails_before_any_model_loads(tiny_models, tmp_path, reference_file,
                                                                        monkeypatch):
    run = generate.run(compose(overrides(tiny_models, tmp_path, reference_file, "method=pilot")))
    folder = next((tmp_path / "outputs" / "generate" / "jsonl").glob("pilot__*"))
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    records[1]["response"] = "  "
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    no_model_loads(monkeypatch)
    with pytest.raises(ValueError, match=r"1 answer\(s\) are empty \(first: 'q1'\)"):
        analyze.run(analyzing(tiny_models, tmp_path, reference_file, f"analysis.answers={folder}",
                              "analysis.parts=[difficulty]"))
    assert run
