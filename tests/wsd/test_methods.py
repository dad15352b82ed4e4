"""Every method on the tiny models: records with the common fields, stops, budgets, formats."""

import pytest

from wsd.benchmarks import Prompt
from wsd.decoding import encode
from wsd.methods import METHODS, DecodeOptions, method_entry
from wsd.prompts import base_prompt, load_urial_prefix, urial_prompt

COMMON = {"response", "response_tokens", "stop_reason", "seconds"}
PROMPTS = [Prompt("a", [{"role": "user", "content": "What is the capital of France?"}]),
           Prompt("b", [{"role": "user", "content": "Give me two tips for baking bread."}]),
           Prompt("c", [{"role": "user", "content": "Name a colour."}])]


def config(method: str, **method_params) -> dict:
    return {"method": {"name": method, **method_params},
            "generation": {"max_new_tokens": 16, "batch_size": 2, "chunk_tokens": 4, "fixed_length": False},
            "wsd": {"engine": "fast", "window": 2, "threshold": 0.5, "draft_max_tokens": 10, "early_stop": True},
            "pilot": {"name": "tiny-pilot"}, "base": {"name": "tiny-base"}, "seed": 0, "draft_cache_dir": None}


DEFAULTS = {"urial": {"prompt_file": None}, "nudging": {"threshold": 0.4, "word_max_tokens": 8}}


def build(name: str, tiny_pair, **params):
    pilot, base = tiny_pair
    cfg = config(name, **{**DEFAULTS.get(name, {}), **params})
    entry = method_entry(name)
    entry.check(cfg)
    return entry.build(cfg, {"pilot": pilot, "base": base})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_writes_the_common_fields_in_order(tiny_pair, name):
    method = build(name, tiny_pair)
    for p in PROMPTS:
        method.check_fits(p.id, p.messages)
    results = list(method.generate_many(PROMPTS))
    assert [p.id for p, _ in results] == ["a", "b", "c"]
    for _, record in results:
        assert COMMON <= set(record)
        assert isinstance(record["response"], str)
        # WSD as the paper: the base's budget is (16 - k) rounded up to a multiple of 50
        assert 0 <= record["response_tokens"] <= (16 + 49 if name == "wsd" else 16)
        assert record["seconds"]["total"] > 0


@pytest.mark.parametrize("name", ["base", "urial", "pilot"])
def test_batched_baselines_match_one_prompt_at_a_time(tiny_pair, name):
    batched = [r["response"] for _, r in build(name, tiny_pair).generate_many(PROMPTS)]
    single = [r["response"] for p in PROMPTS for _, r in build(name, tiny_pair).generate_many([p])]
    assert batched == single


def test_fixed_length_baseline_runs_its_whole_budget(tiny_pair):
    cfg = config("base")
    cfg["generation"]["fixed_length"] = True
    method = method_entry("base").build(cfg, {"base": tiny_pair[1]})
    for _, record in method.generate_many(PROMPTS):
        assert record["response_tokens"] == 16 and record["stop_reason"] == "length"


def test_base_baseline_reads_the_plain_format(tiny_pair):
    base = tiny_pair[1]
    method = build("base", tiny_pair)
    _, record = next(method.generate_many(PROMPTS[:1]))
    expected = encode(base.tokenizer, base_prompt(PROMPTS[0].messages, base.tokenizer.bos_token))
    assert record["prompt_tokens"] == len(expected)


def test_urial_prompt_has_the_examples_then_the_conversation():
    prefix = load_urial_prefix(None)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": " And now? "}]
    text = urial_prompt(prefix, messages, "<bos>")
    assert text.startswith("<bos># Instruction")
    assert text.endswith("# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello!\n```\n\n"
                         "# Query:\n```\nAnd now?\n```\n\n# Answer:\n```\n")
    assert text.count("# Query:\n```") == 3 + 2  # three examples, two user turns


def test_urial_takes_a_user_file_and_rejects_a_wrong_one(tmp_path, tiny_pair):
    own = tmp_path / "urial.txt"
    own.write_text("# Instruction\n\nBe kind.\n\n# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello!\n```\n")
    method = build("urial", tiny_pair, prompt_file=str(own))
    assert method.render([{"role": "user", "content": "Q"}]).count("# Query:\n```") == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("Just a system prompt.")
    with pytest.raises(ValueError, match="has no '# Query:' / '# Answer:' examples"):
        build("urial", tiny_pair, prompt_file=str(bad))
    with pytest.raises(FileNotFoundError, match="URIAL prompt file '/no/file' does not exist"):
        build("urial", tiny_pair, prompt_file="/no/file")


def test_urial_answer_drops_its_closing_fence(tiny_pair):
    assert build("urial", tiny_pair).finish("Paris is the capital.\n```") == "Paris is the capital."


@pytest.mark.parametrize("params, message", [
    ({"threshold": 0.0}, r"method.threshold must be in \(0, 1\], got 0.0"),
    ({"word_max_tokens": 0}, "method.word_max_tokens must be an integer >= 1, got 0"),
])
def test_bad_nudging_parameters(params, message):
    cfg = config("nudging", **{**DEFAULTS["nudging"], **params})
    with pytest.raises(ValueError, match=message):
        method_entry("nudging").check(cfg)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'beam'; accepted: base, nudging, pilot, urial, wsd"):
        method_entry("beam")


def test_sampling_is_seeded_and_only_for_single_model_methods(tiny_pair):
    from transformers import set_seed

    def sample(seed):
        cfg = config("pilot")
        cfg["generation"].update(temperature=1.5, top_p=0.95)
        method = method_entry("pilot").build(cfg, dict(zip(("pilot", "base"), tiny_pair)))
        set_seed(seed)
        return [r["response"] for _, r in method.generate_many(PROMPTS)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = [r["response"] for _, r in build("pilot", tiny_pair).generate_many(PROMPTS)]
    assert sample(1) != greedy
    for name in ("wsd", "nudging"):
        cfg = config(name, **DEFAULTS.get(name, {}))
        cfg["generation"]["temperature"] = 0.7
        with pytest.raises(ValueError, match=f"method '{name}' decodes greedily; generation.temperature must be 0"):
            method_entry(name).check(cfg)
    with pytest.raises(ValueError, match="generation.top_p must be in"):
        DecodeOptions(top_p=0)
