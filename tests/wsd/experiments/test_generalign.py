import json

from wsd.experiments.generalign import load_source


def test_a_source_samples_only_among_prompts_short_enough(tmp_path):
    path = tmp_path / "prompts.jsonl"
    texts = [f"short question {i}?" for i in range(6)] + ["a long brief " * 50] * 3
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    source = {"name": "mine", "category": "helpful", "path": str(path), "take": 4, "seed": 1}
    assert len(load_source(source)) == 4
    short = load_source({**source, "max_chars": 100})
    assert len(short) == 4 and all(p.prompt.startswith("short question") for p in short)
    assert len(load_source({**source, "max_chars": 100, "take": None})) == 6
