import json

import pytest

from wsd.core.config import benchmark_config
from wsd.core.packaged import MissingPackageError
from wsd.data.prompt_sets import BenchmarkUnavailable, hh_transcript, load_benchmark


def shipped(name: str, **overrides) -> dict:
    """A benchmark's shipped config (conf/benchmark/<name>.yaml) with overrides."""
    return {**benchmark_config(name), **overrides}


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl(path):
    return load_benchmark(shipped("jsonl", path=str(path)))


# ---- packaged benchmarks: read from their registry packages, deterministic ids


def test_alpaca_eval_is_read_from_its_package():
    prompts = load_benchmark(shipped("alpaca_eval"))
    assert len(prompts) == 805
    assert prompts[0].id == "alpaca_eval-000"
    assert prompts[0].instruction.startswith("What are the names of some famous actors")
    assert prompts[0].meta["reference_generator"] == "gpt4_1106_preview"
    assert prompts[0].meta["reference"].startswith("Several famous actors")
    assert [p.id for p in load_benchmark(shipped("alpaca_eval", limit=3))] == [p.id for p in prompts[:3]]


def test_arena_hard_v2_is_read_from_its_package():
    prompts = load_benchmark(shipped("arena_hard"))
    assert len(prompts) == 750
    assert prompts[0].id == "arena_hard-2edbb5f36f5b42be"
    assert prompts[0].instruction.startswith("Write me a zig program")
    assert prompts[0].meta["category"] == "hard_prompt"
    assert len({p.id for p in prompts}) == 750


def test_mt_bench_has_two_turns_and_references():
    prompts = load_benchmark(shipped("mt_bench"))
    assert len(prompts) == 80
    assert (prompts[0].id, prompts[-1].id) == ("mt_bench-081", "mt_bench-160")
    assert all(len(p.followups) == 1 for p in prompts)
    assert prompts[0].turn_ids == ["mt_bench-081", "mt_bench-081/turn-2"]
    math = next(p for p in prompts if p.meta["category"] == "math")
    assert len(math.meta["reference"]) == 2
    second = prompts[0].next_turn("My first answer.")
    assert second.id == "mt_bench-081/turn-2" and second.turn == 2 and second.question_id == "mt_bench-081"
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1]["content"] == "My first answer."
    assert second.instruction == prompts[0].followups[0] and second.followups == ()


def test_harmful_has_harmbench_then_do_not_answer():
    prompts = load_benchmark(shipped("harmful"))
    sources = [p.meta["source"] for p in prompts]
    assert sources.count("harmbench") == 200 and sources.count("donotanswer") == 939
    assert prompts[0].id == "harmful-harmbench-000" and prompts[-1].id == "harmful-donotanswer-938"
    assert {p.meta["category"] for p in prompts if p.meta["source"] == "donotanswer"} >= {"malicious_uses"}


def test_ifeval_keeps_instruction_ids_and_kwargs():
    prompts = load_benchmark(shipped("ifeval"))
    assert len(prompts) == 541
    assert prompts[0].id == "ifeval-1000"
    assert prompts[0].meta["instruction_id_list"][0] == "punctuation:no_comma"
    assert prompts[0].meta["kwargs"][1] == {"num_highlights": 3}


def test_seeded_subset_is_deterministic_and_in_benchmark_order():
    a = [p.id for p in load_benchmark(shipped("harmful", limit=8, subset_seed=0))]
    b = [p.id for p in load_benchmark(shipped("harmful", limit=8, subset_seed=0))]
    c = [p.id for p in load_benchmark(shipped("harmful", limit=8, subset_seed=1))]
    everything = [p.id for p in load_benchmark(shipped("harmful"))]
    assert a == b != c and len(set(a)) == 8
    assert a == sorted(a, key=everything.index)


# ---- Hub-only benchmarks: local files with the Hub's columns, and a clear error offline


def test_hh_rlhf_from_a_local_file(tmp_path):
    rows = [{"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour.",
             "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant: No."}]
    prompts = load_benchmark(shipped("hh_rlhf", path=str(write_lines(tmp_path / "hh.jsonl", rows))))
    assert prompts[0].id == "hh_rlhf-0000"
    assert [m["role"] for m in prompts[0].messages] == ["user", "assistant", "user"]
    assert prompts[0].instruction == "How do I bake bread?"
    assert prompts[0].meta == {"chosen": "Mix flour.", "rejected": "No."}


def test_hh_transcript_parses_roles():
    assert hh_transcript("\n\nHuman: a\n\nAssistant: b") == [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]


def test_truthfulqa_from_a_local_file(tmp_path):
    rows = [{"question": "What happens if you crack your knuckles a lot?", "best_answer": "Nothing in particular",
             "correct_answers": ["Nothing"], "incorrect_answers": ["Arthritis"], "category": "Health"}]
    prompts = load_benchmark(shipped("truthfulqa", path=str(write_lines(tmp_path / "tqa.jsonl", rows))))
    assert prompts[0].id == "truthfulqa-000"
    assert prompts[0].meta["best_answer"] == "Nothing in particular"


@pytest.mark.parametrize("name, dataset", [("hh_rlhf", "Anthropic/hh-rlhf"), ("truthfulqa", "truthfulqa/truthful_qa")])
def test_hub_benchmark_offline_says_which_file_to_pass(name, dataset):
    with pytest.raises(BenchmarkUnavailable, match=f"reads {dataset} from the Hugging Face Hub, but this machine is "
                                                   "offline .*pass benchmark.path=FILE"):
        load_benchmark(shipped(name))


def test_local_file_with_the_wrong_schema_names_file_line_and_columns(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"},
                                               {"prompt": "not hh"}])
    with pytest.raises(ValueError, match=r"hh.jsonl:2: missing column\(s\) chosen, rejected; found prompt"):
        load_benchmark(shipped("hh_rlhf", path=str(path)))


# ---- user JSONL files


def test_jsonl_accepts_prompt_instruction_and_messages(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "First?"},
        "",
        {"instruction": "Second?", "category": "x"},
        {"id": 7, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                               {"role": "user", "content": "Bye?"}]},
    ])
    prompts = jsonl(path)
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
        ('{"id": "a", "prompt": "again"}', r"p.jsonl:2: duplicate id 'a' \(first at .*p.jsonl:1\)"),
        ('{"prompt": 3}', r"p.jsonl:2: 'prompt' must be a string"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "a", "prompt": "fine"}', line])
    with pytest.raises(ValueError, match=message):
        jsonl(path)


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmark file '.*nope.jsonl' does not exist"):
        jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "p.xml").write_text("<p/>")
    with pytest.raises(ValueError, match="unsupported file type '.xml'"):
        jsonl(tmp_path / "p.xml")


def test_unknown_benchmark_source_bad_limit_and_missing_package():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; accepted: alpaca_eval, arena_hard, harmful, "
                                         "hh_rlhf, ifeval, jsonl, mt_bench, truthfulqa"):
        load_benchmark({"name": "mmlu"})
    with pytest.raises(ValueError, match="unknown source 'hub'; accepted: packaged"):
        load_benchmark(shipped("mt_bench", source="hub"))
    with pytest.raises(ValueError, match="benchmark.limit must be null or an integer >= 1, got 0"):
        load_benchmark(shipped("alpaca_eval", limit=0))
    with pytest.raises(MissingPackageError, match="package 'no-such-pkg' is not installed"):
        load_benchmark(shipped("alpaca_eval", package="no-such-pkg"))
