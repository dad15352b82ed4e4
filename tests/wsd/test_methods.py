"""Every method on the tiny models: records with the common fields, stops, budgets, formats."""

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose
from wsd.backends.decoding import encode
from wsd.backends.reward import RewardModel, RewardSettings
from wsd.core.prompts import base_prompt, load_urial_prefix, urial_prompt
from wsd.data.prompt_sets import Prompt
from wsd.methods import METHODS, effective_backend, method_entry

COMMON = {"response", "response_tokens", "stop_reason", "seconds"}
PROMPTS = [Prompt("a", [{"role": "user", "content": "What is the capital of France?"}]),
           Prompt("b", [{"role": "user", "content": "Give me two tips for baking bread."}]),
           Prompt("c", [{"role": "user", "content": "Name a colour."}])]


def config(method: str, **method_params) -> dict:
    return {"method": {"name": method, **method_params},
            "generation": {"max_new_tokens": 16, "batch_size": 2, "chunk_tokens": 4, "fixed_length": False},
            "wsd": {"implementation": "fast", "window": 2, "threshold": 0.5, "draft_max_tokens": 10, "early_stop": True},
            "pilot": {"name": "tiny-pilot"}, "base": {"name": "tiny-base"}, "seed": 0, "draft_cache_dir": None}


def method_defaults(name: str) -> dict:
    """The method's settings as `method=<name>` composes them (its typed block and its file),
    less its name (CARDS's `auto` reward target is a number here: the tiny reward model was
    not trained by us)."""
    values = OmegaConf.to_container(compose([f"method={name}"]).method)
    values.pop("name")
    return {**values, "reward_target": 0.0} if name == "cards" else values


@pytest.fixture(scope="module")
def tiny_reward(tiny_reward_model):
    return RewardModel(RewardSettings(path=tiny_reward_model))


def build(name: str, tiny_pair, tiny_reward=None, **params):
    """The method on the tiny pair; the tiny pilot stands in for Aligner's corrector."""
    pilot, base = tiny_pair
    cfg = config(name, **{**method_defaults(name), **params})
    entry = method_entry(name)
    if name != "aligner":  # its check looks for the real corrector
        entry.check(cfg)
    return entry.build(cfg, {"pilot": pilot, "base": base, "reward": tiny_reward, "corrector": pilot})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_writes_the_common_fields_in_order(tiny_pair, tiny_reward, name):
    method = build(name, tiny_pair, tiny_reward)
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
    cfg = config("nudging", **{**method_defaults("nudging"), **params})
    with pytest.raises(ValueError, match=message):
        method_entry("nudging").check(cfg)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'beam'; accepted: aligner, args, base, best_of_n, cards, nudging, pilot, urial, wsd"):
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
        cfg = config(name, **method_defaults(name))
        cfg["generation"]["temperature"] = 0.7
        with pytest.raises(ValueError, match=f"method '{name}' decodes greedily; generation.temperature must be 0"):
            method_entry(name).check(cfg)


# ---------------------------------------------------------------------------------------
# The reward-guided baselines and Aligner


def test_args_with_weight_zero_is_the_base_greedy_and_with_weight_it_asks_the_reward_model(tiny_pair, tiny_reward):
    greedy = [r for _, r in build("base", tiny_pair).generate_many(PROMPTS)]
    unguided = [r for _, r in build("args", tiny_pair, tiny_reward, weight=0).generate_many(PROMPTS)]
    assert [r["response"] for r in unguided] == [r["response"] for r in greedy]
    assert all(r["reward_model_calls"] == 0 for r in unguided)
    forwards = tiny_reward.forwards
    guided = [r for _, r in build("args", tiny_pair, tiny_reward, k=3, weight=50.0).generate_many(PROMPTS)]
    # one reward-model call per generated token (its k candidates together), EOS included
    for r in guided:
        assert r["reward_model_calls"] in (r["response_tokens"], r["response_tokens"] + 1)
        assert r["candidates_scored"] == 3 * r["reward_model_calls"] and r["seconds"]["reward"] > 0
    # and each step's calls for the batch's live prompts (batches of 2) are one forward
    steps = [max(r["reward_model_calls"] for r in guided[i : i + 2]) for i in range(0, len(guided), 2)]
    assert tiny_reward.forwards - forwards == sum(steps) < sum(r["reward_model_calls"] for r in guided)


def test_args_on_any_engine_equals_args_on_the_cached_batch(tiny_pair, tiny_reward, monkeypatch):
    """The engine-protocol path (what vLLM runs) and the HF KV-cache batch pick the same tokens."""
    import wsd.baselines.args

    method = build("args", tiny_pair, tiny_reward, k=3, weight=2.0)
    assert isinstance(wsd.baselines.args.decoder_for(tiny_pair[1], [[1, 2]]), wsd.baselines.args.BatchDecoder)
    cached = [r["response"] for _, r in method.generate_many(PROMPTS)]
    monkeypatch.setattr(wsd.baselines.args, "decoder_for", wsd.baselines.args.EngineDecoder)
    assert [r["response"] for _, r in method.generate_many(PROMPTS)] == cached


def test_args_steps_to_the_candidate_the_reward_prefers(tiny_pair, tiny_reward):
    """With a huge weight the reward alone decides: each token of each prompt of a batch is
    the best-rewarded of the base's top k as the reward model scores them from scratch, one
    prompt at a time (no caches on either side)."""
    import torch

    cfg_tokens = 4
    method = build("args", tiny_pair, tiny_reward, k=4, weight=1e6)
    method.max_new_tokens = cfg_tokens
    base = tiny_pair[1]
    tok = base.tokenizer
    records = [r for _, r in method.generate_many(PROMPTS[:2])]
    assert [r["batch_size"] for r in records] == [2, 2]
    for prompt, record in zip(PROMPTS, records):
        ids = encode(tok, base_prompt(prompt.messages, tok.bos_token))
        answer = []
        for _ in range(record["response_tokens"]):
            with torch.inference_mode():
                logits = base.model(torch.tensor([ids + answer])).logits[0, -1]
            top = logits.topk(5)
            assert top.values[3] - top.values[4] > 1e-4, "a near tie: this check needs a distinct top 4"
            candidates = top.indices[:4].tolist()
            rewards = tiny_reward.score_answers(prompt.messages, [tok.decode(answer + [c], skip_special_tokens=True)
                                                                  for c in candidates])
            ranked = sorted(rewards, reverse=True)
            assert ranked[0] - ranked[1] > 1e-4, "a near tie: this check needs distinct rewards"
            answer.append(candidates[rewards.index(ranked[0])])
        assert record["response_tokens"] == cfg_tokens
        assert record["response"] == tok.decode(answer, skip_special_tokens=True)


def test_best_of_one_is_its_source_sampled_with_the_same_seed(tiny_pair, tiny_reward):
    from transformers import set_seed

    source = method_entry("urial").build({**config("urial", prompt_file=None),
                                          "generation": {**config("urial")["generation"], "temperature": 0.7}},
                                         {"base": tiny_pair[1]})
    set_seed(0)
    sampled = [r["response"] for _, r in source.generate_many(PROMPTS)]
    best = [r for _, r in build("best_of_n", tiny_pair, tiny_reward, n=1).generate_many(PROMPTS)]
    assert [r["response"] for r in best] == sampled
    several = [r for _, r in build("best_of_n", tiny_pair, tiny_reward, n=3).generate_many(PROMPTS)]
    for r in several:
        assert len(r["samples"]) == 3 and r["sample_rewards"][r["chosen_sample"]] == max(r["sample_rewards"])
        assert r["response"] == r["samples"][r["chosen_sample"]]["response"]
    assert several[0]["samples"][0]["response"] == sampled[0]  # sample 0 is the seed's own


def test_cards_with_a_threshold_no_segment_can_miss_keeps_every_first_segment(tiny_pair, tiny_reward):
    lenient = [r for _, r in build("cards", tiny_pair, tiny_reward, reward_target=-1e9, acceptance="hard",
                                   entropy_threshold=0.5).generate_many(PROMPTS)]
    for r in lenient:
        assert r["rejections"] == 0 and r["segments"] >= 1
        assert r["reward_model_calls"] == r["segments"] + 1  # one per segment, one for the prompt alone
        assert r["sampled_tokens"] == r["response_tokens"]
    strict = [r for _, r in build("cards", tiny_pair, tiny_reward, reward_target=1e9, acceptance="hard",
                                  max_rejections=2).generate_many(PROMPTS)]
    for r in strict:  # every segment refused twice, then the best of its three candidates kept
        assert r["rejections"] == 2 * r["segments"] and r["sampled_tokens"] >= r["response_tokens"]
    again = [r["response"] for _, r in build("cards", tiny_pair, tiny_reward, reward_target=1e9, acceptance="hard",
                                             max_rejections=2).generate_many(PROMPTS)]
    assert again == [r["response"] for r in strict]  # seeded per prompt


def test_cards_auto_target_needs_a_reward_scale_and_bad_settings_fail_early(tiny_reward_model, tmp_path):
    from wsd.backends.reward import write_reward_scale

    cfg = {**config("cards", **{**method_defaults("cards"), "reward_target": "auto"}),
           "reward_model": {"path": tiny_reward_model}}
    with pytest.raises(ValueError, match="no reward_scale.json"):
        method_entry("cards").check(cfg)
    scaled = tmp_path / "rm"
    import shutil

    shutil.copytree(tiny_reward_model, scaled)
    scale = write_reward_scale(scaled, [1.0, 2.0, 3.0, 4.0], [0.0, 1.0])
    settings = method_entry("cards").check({**cfg, "reward_model": {"path": str(scaled)}})
    assert settings.reward_target == scale["target"] == pytest.approx(3.7)
    with pytest.raises(ValueError, match="method.acceptance must be soft or hard"):
        method_entry("cards").check(config("cards", **{**method_defaults("cards"), "reward_target": 1.0,
                                                        "acceptance": "maybe"}))
    on_vllm = {"backend": {"name": "vllm", "cpu_kvcache_space_gib": 2}}
    assert effective_backend({**config("cards"), **on_vllm}) == {"name": "hf"}  # its entropy needs HF
    assert effective_backend({**config("args"), **on_vllm}) == on_vllm["backend"]
    with pytest.raises(ValueError, match="method.source must be one of base, urial, pilot"):
        method_entry("best_of_n").check(config("best_of_n", **{**method_defaults("best_of_n"), "source": "wsd"}))


def test_aligner_prompt_and_an_absent_corrector_named_before_anything_loads(tiny_pair, tiny_reward, tmp_path):
    from wsd.baselines.aligner import aligner_prompt

    assert aligner_prompt("Q?", "A.") == ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair "
                                          "to make it more helpful and harmless: Q? | A. ASSISTANT:")
    cfg = {**config("aligner", **method_defaults("aligner")),
           "corrector": {"name": "aligner-7b-v1.0", "path": str(tmp_path / "no-aligner")}}
    with pytest.raises(FileNotFoundError, match="aligner is unavailable.*corrector.path=aligner/aligner-7b-v1.0"):
        method_entry("aligner").check(cfg)
    _, record = next(build("aligner", tiny_pair, tiny_reward).generate_many(PROMPTS[:1]))
    base_answer = next(build("base", tiny_pair).generate_many(PROMPTS[:1]))[1]["response"]
    assert record["original_response"] == base_answer and record["corrector"] == tiny_pair[0].name


def test_the_draft_cache_is_keyed_by_backend_and_by_the_engine_settings_in_use():
    """The cache serves drafts and base probabilities only to runs that would compute the same:
    HF and vLLM (and each vLLM setting) apart; HF runs blind to the unused `vllm:` block; the
    switch rule shared by every point of a sweep."""
    from wsd.core.store import config_key
    from wsd.weak_to_strong.method import draft_identity, wsd_settings

    def key(backend="hf", vllm=None, **wsd):
        cfg = config("wsd")
        cfg["backend"] = {"name": backend}
        cfg["wsd"] = {**cfg["wsd"], **wsd}
        cfg["pilot"] = {**cfg["pilot"], "vllm": vllm or {"dtype": "float32"}}
        return config_key(draft_identity(cfg, *wsd_settings(cfg)[1:]))

    assert key("hf") != key("vllm")
    assert key("vllm") != key("vllm", vllm={"dtype": "bfloat16"})
    assert key("hf") == key("hf", vllm={"dtype": "bfloat16"})
    assert key("hf") == key("hf", window=6, threshold=0.9) != key("hf", draft_max_tokens=8)


def test_a_draft_budget_above_the_answer_budget_is_clamped_and_said(caplog):
    """The pilot never drafts past the answer's budget (a kept draft of k > budget got a base
    budget of 1 and outran it), and the context check covers the longest answer allowed."""
    from wsd.weak_to_strong.method import _say_draft_lowered, wsd_settings

    _say_draft_lowered.cache_clear()  # said once per pair in a process: this test must see it said
    cfg = config("wsd")
    cfg["wsd"] = {**cfg["wsd"], "draft_max_tokens": 96}
    _, settings, _ = wsd_settings(cfg)
    assert settings.draft_max_tokens == 16
    with caplog.at_level("WARNING", logger="wsd.weak_to_strong.method"):
        method_entry("wsd").build(cfg, {"pilot": None, "base": None})
    assert "wsd.draft_max_tokens=96" in caplog.text and "generation.max_new_tokens=16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="wsd.weak_to_strong.method"):
        method_entry("wsd").build(cfg, {"pilot": None, "base": None})
    assert not caplog.text  # a server builds WSD for every batch: said once
    assert settings.max_answer_tokens() == 16 + 49  # k = 1: 1 + 15 rounded up to 50
    fixed = config("wsd")
    fixed["generation"] = {**fixed["generation"], "fixed_length": True}
    fixed["wsd"] = {**fixed["wsd"], "draft_max_tokens": 96}
    assert wsd_settings(fixed)[1].max_answer_tokens() == 16


@pytest.mark.parametrize("fixed_length", [False, True])
def test_answers_stay_within_their_budget_when_the_draft_budget_is_larger(tiny_pair, fixed_length):
    """threshold 1.0 keeps whole drafts: a 96-token draft budget on a 16-token answer."""
    pilot, base = tiny_pair
    cfg = config("wsd")
    cfg["generation"] = {**cfg["generation"], "fixed_length": fixed_length}
    cfg["wsd"] = {**cfg["wsd"], "draft_max_tokens": 96, "threshold": 1.0}
    records = [r for _, r in method_entry("wsd").build(cfg, {"pilot": pilot, "base": base}).generate_many(PROMPTS)]
    assert all(r["draft_tokens"] <= 16 for r in records)
    # the kept draft is in base tokens: its tokenization of 16 pilot tokens may be a little longer
    assert all(r["response_tokens"] <= max(16 + 49 * (not fixed_length), r["keep_count"]) for r in records)
    if fixed_length:
        assert all(r["response_tokens"] == max(16, r["keep_count"]) for r in records)
