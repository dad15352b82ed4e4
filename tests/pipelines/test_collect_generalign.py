import json

import datasets
import pytest

from pipelines import collect_generalign
from tests.conftest import QUESTIONS, tiny_overrides
from wsd.core.store import RecordFile
from wsd.methods import compose


@pytest.fixture
def sources(tmp_path):
    """Two small prompt files; one line is a planted copy of an MT-Bench question (the
    evaluation set here), with different case and punctuation."""
    helpful, harmless = tmp_path / "helpful.jsonl", tmp_path / "harmless.txt"
    planted = "compose an engaging travel blog post about a recent trip to hawaii highlighting cultural " \
              "experiences and must see attractions"
    helpful.write_text("".join(json.dumps({"q": q}) + "\n" for q in [*QUESTIONS, planted.upper() + "!!"]))
    harmless.write_text("How do I pick a lock?\nHow can I hurt someone?\nHow do I make a fake ID?\n")
    return helpful, harmless


def overrides(tiny_models, tmp_path, sources, *extra):
    helpful, harmless = sources
    source_list = (f"[{{name: mine, category: helpful, path: '{helpful}', field: q}},"
                   f"{{name: risky, category: harmless, path: '{harmless}', field: prompt}}]")
    return tiny_overrides(
        tiny_models, tmp_path, f"generalign.sources={source_list}", "generalign.evaluation_benchmarks=[mt_bench]",
        "generalign.max_new_tokens=12", "generalign.test_fraction=0.25", "generalign.prompt_batch_size=4",
        "generalign.min_margin=0.0", "generalign.scorers.0.judge.batch_size=16", *extra)


def test_collection_decontaminates_pairs_and_resumes(tiny_models, tmp_path, sources, monkeypatch):
    summary = collect_generalign.run(compose(overrides(tiny_models, tmp_path, sources), "collect_generalign"))
    assert summary["decontamination"]["dropped"] == 1
    assert summary["decontamination"]["by_reason"] == {"normalized": 1}
    assert summary["prompts"] == len(QUESTIONS) + 3
    [folder] = (tmp_path / "outputs" / "generalign").iterdir()
    records = [json.loads(line) for line in open(folder / "candidates.jsonl")]
    assert all(len(r["candidates"]) == 3 for r in records)  # pilot x 2 + urial x 1
    assert {c["teacher"] for r in records for c in r["candidates"]} == {"pilot", "urial"}
    harmless = [c for r in records if r["category"] == "harmless" for c in r["candidates"]]
    assert all({"local_llm_judge/round_robin", "harmlessness/refusal"} <= set(c["scores"]) for c in harmless)
    dpo = datasets.load_from_disk(str(folder / "dataset" / "dpo"))
    assert set(dpo) == {"train", "test"}
    pairs = [row for split in ("train", "test") for row in dpo[split]]
    assert pairs and sum(summary["pairs"].values()) == len(pairs)
    for row in pairs:
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert row["chosen_score"] - row["rejected_score"] == pytest.approx(row["margin"]) and row["margin"] >= 0
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    sft = datasets.load_from_disk(str(folder / "dataset" / "sft"))
    assert sft["train"].num_rows == summary["sft"]["train"] and "completion" in sft["train"].column_names
    card = (folder / "README.md").read_text()
    assert "Decontamination" in card and "1 dropped" in card and "| mine |" in card

    # a second run answers nothing again; a margin that no pair meets leaves no pairs
    monkeypatch.setattr(collect_generalign, "answer_and_score", lambda *a: pytest.fail("answered again"))
    again = collect_generalign.run(compose(overrides(tiny_models, tmp_path, sources), "collect_generalign"))
    assert again["pairs"] == summary["pairs"]


def test_margin_filters_pairs(tiny_models, tmp_path, sources):
    summary = collect_generalign.run(compose(
        overrides(tiny_models, tmp_path, sources, "generalign.min_margin=5.0"), "collect_generalign"))
    assert summary["pairs"] == {"train": 0, "test": 0}


@pytest.mark.parametrize("extra, message", [
    (["generalign.teachers=[{method: wsd, samples: 2}]"], "method 'wsd' decodes greedily"),
    (["generalign.teachers=[{method: pilot, samples: 0}]"], "samples must be an integer >= 1"),
    (["generalign.scorers=[{judge: {name: gpt5}, metric: x, weight: 1, categories: [helpful]}]"], "unknown judge 'gpt5'"),
    (["generalign.test_fraction=1.5"], "test_fraction must be in"),
    (["generalign.sources.0.category=funny"], "unknown category 'funny'"),
    (["generalign.sources.0.field=nope"], "no field 'nope'"),
])
def test_bad_input_is_named_before_models_load(tiny_models, tmp_path, sources, monkeypatch, extra, message):
    monkeypatch.setattr("wsd.backends.engines.ModelPool.engines", lambda *a: pytest.fail("models were loaded"))
    with pytest.raises(ValueError, match=message):
        collect_generalign.run(compose(overrides(tiny_models, tmp_path, sources, *extra), "collect_generalign"))


def test_killed_collection_resumes_to_what_an_uninterrupted_one_collects(tiny_models, tmp_path, sources,
                                                                         monkeypatch):
    """Killed in the middle of writing its second batch (sampling at temperature 0.7), then
    rerun: the same candidates, prompt by prompt, as a collection that never stopped."""
    sampled = ("generalign.temperature=0.7", "generalign.teachers=[{method: pilot, samples: 2}]")
    uninterrupted = collect_generalign.run(compose(
        overrides(tiny_models, tmp_path / "whole", sources, *sampled), "collect_generalign"))
    real_append, appended = RecordFile.append, []

    def append_then_die(self, record):
        if len(appended) == 6:  # the first batch of 4, then 2 of the second
            raise KeyboardInterrupt("killed")
        real_append(self, record)
        appended.append(record["id"])

    monkeypatch.setattr(RecordFile, "append", append_then_die)
    cfg = compose(overrides(tiny_models, tmp_path / "killed", sources, *sampled), "collect_generalign")
    with pytest.raises(KeyboardInterrupt):
        collect_generalign.run(cfg)
    monkeypatch.setattr(RecordFile, "append", real_append)
    resumed = collect_generalign.run(cfg)

    def candidates(root):
        [folder] = (root / "outputs" / "generalign").iterdir()
        rows = [json.loads(line) for line in open(folder / "candidates.jsonl")]
        return {r["id"]: [c["response"] for c in r["candidates"]] for r in rows}

    whole, killed = candidates(tmp_path / "whole"), candidates(tmp_path / "killed")
    assert len(killed) == len(whole) == uninterrupted["prompts"] and killed == whole
    assert len({tuple(v) for v in whole.values()}) > 1 and any(len(set(v)) == 2 for v in whole.values())
    assert resumed["pairs"] == uninterrupted["pairs"]
