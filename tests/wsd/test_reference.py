import pytest
import torch

from wsd.prompts import base_prompt
from wsd.decoding import WSDSettings, base_budget, encode
from wsd.reference import ReferenceWSD, check, continue_from, draft

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return tiny_pair


@pytest.mark.parametrize("target, kept, budget", [(2048, 37, 2050), (2048, 0, 2050), (2048, 48, 2000),
                                                   (256, 6, 250), (256, 7, 250), (20, 20, 1), (20, 30, 1)])
def test_base_budget_rounds_up_to_fifty(target, kept, budget):
    assert base_budget(target, kept) == budget


@pytest.mark.parametrize("field, value", [("draft_max_tokens", 0), ("target_max_tokens", 2.5), ("window", 0)])
def test_settings_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0] if field == "window" else field):
        WSDSettings(**{field: value})


def test_tokenizers_really_differ(pair):
    pilot, base = pair
    text = "Sure! The capital of France is Paris."
    assert encode(pilot.tokenizer, text) != encode(base.tokenizer, text)
    assert len(pilot.tokenizer) != len(base.tokenizer)


def test_draft_respects_budget(pair):
    pilot, _ = pair
    d = draft(pilot, MESSAGES, WSDSettings(draft_max_tokens=9))
    assert d.num_tokens <= 9
    assert d.stop_reason in {"eos", "stop_string", "length"}
    assert "<|im_end|>" not in d.text


def test_check_scores_the_base_tokenization_of_the_draft(pair):
    _, base = pair
    draft_text = "  Sure! The capital of France is Paris. \n"
    c = check(base, MESSAGES, draft_text)
    prompt_text = base_prompt(MESSAGES, base.tokenizer.bos_token)
    joined = encode(base.tokenizer, (prompt_text + draft_text.strip()).rstrip())
    assert c.prompt_ids + c.draft_ids == joined
    assert c.prompt_ids == encode(base.tokenizer, prompt_text)
    assert base.tokenizer.decode(c.draft_ids) == draft_text.strip()
    with torch.no_grad():
        logprobs = torch.log_softmax(base.model(torch.tensor([joined])).logits[0], dim=-1)
    n = len(c.prompt_ids)
    direct = [logprobs[n - 1 + i, t].exp().item() for i, t in enumerate(c.draft_ids)]
    assert c.token_probs == pytest.approx(direct, rel=1e-5, abs=1e-9)


def test_empty_draft_is_scored_as_nothing(pair):
    _, base = pair
    c = check(base, MESSAGES, " \n ")
    assert c.draft_ids == [] and c.token_probs == []


def test_continuation_starts_from_kept_ids(pair):
    _, base = pair
    c = check(base, MESSAGES, "Sure! The capital of France is Paris.")
    kept = c.draft_ids[:4]
    cont = continue_from(base, c.prompt_ids, kept, WSDSettings(target_max_tokens=10))
    assert len(cont.ids) <= base_budget(10, 4)
    assert cont.response.startswith(base.tokenizer.decode(kept, skip_special_tokens=True))
    assert cont.stop_reason in {"eos", "stop_string", "length"}


def test_engine_record_is_consistent(pair):
    pilot, base = pair
    record = ReferenceWSD(pilot, base, WSDSettings(window=2, threshold=0.5, draft_max_tokens=10,
                                                   target_max_tokens=12)).generate(MESSAGES)
    assert len(record["base_token_probs"]) == record["base_draft_tokens"]
    assert 0 <= record["keep_count"] <= record["base_draft_tokens"]
    assert record["draft"].strip().startswith(record["accepted_draft"])
    assert record["response"].startswith(record["accepted_draft"])
    assert set(record["seconds"]) == {"draft", "check", "target", "total"}


def test_stop_on_strings_sees_only_new_tokens(pair):
    from wsd.decoding import StopOnStrings

    _, base = pair
    tok = base.tokenizer
    prompt = encode(tok, "[User]\nHello")  # a stop string inside the prompt must not count
    rows = [prompt + encode(tok, " there friend"), prompt + encode(tok, " fine.\n\n[User]")]
    width = max(map(len, rows))
    batch = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    stop = StopOnStrings(tok, ["\n\n[User]", "[User]"], prompt_length=len(prompt))
    assert stop(batch[:, : len(rows[0])], None).tolist() == [False, False]
    assert stop(torch.tensor([rows[1]]), None).tolist() == [True]


def test_generation_halts_at_a_stop_string(pair):
    from wsd.reference import greedy_generate

    _, base = pair
    prompt = encode(base.tokenizer, "The quick brown fox")
    free = greedy_generate(base, prompt, 30, ["\x00never"])
    text = base.tokenizer.decode(free.ids)
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the model does produce
    halted = greedy_generate(base, prompt, 30, [stop])
    assert halted.stop_reason == "stop_string"
    assert len(halted.ids) < len(free.ids)
    assert stop in base.tokenizer.decode(halted.ids)
    assert free.ids[: len(halted.ids)] == halted.ids
