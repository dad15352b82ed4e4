import pytest
import torch

from wsd.backends.decoding import base_budget, encode
from wsd.core.prompts import base_prompt, cut_at_stop, pilot_prompt
from wsd.weak_to_strong.reference import ReferenceWSD, check_all, continue_all, draft_all
from wsd.weak_to_strong.switch import WSDSettings

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return tiny_pair


@pytest.mark.parametrize("target, kept, budget", [(2048, 37, 2050), (2048, 0, 2050), (2048, 48, 2000),
                                                   (256, 6, 250), (256, 7, 250), (20, 20, 1), (20, 30, 1)])
def test_base_budget_rounds_up_to_fifty(target, kept, budget):
    assert base_budget(target, kept) == budget


def test_tokenizers_really_differ(pair):
    pilot, base = pair
    text = "Sure! The capital of France is Paris."
    assert encode(pilot.tokenizer, text) != encode(base.tokenizer, text)
    assert len(pilot.tokenizer) != len(base.tokenizer)


def free_greedy(loaded, ids: list[int], steps: int, stops: list[str]) -> tuple[list[int], str]:
    """The oracle: argmax one token at a time with full forwards, ended by the first EOS
    (excluded), the first stop string in the new text, or `steps` tokens."""
    eos, new = set(loaded.eos_token_ids), []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(loaded.model(input_ids=torch.tensor([ids + new], device=loaded.device)).logits[0, -1].argmax())
            if token in eos:
                return new, "eos"
            new.append(token)
            if any(stop in loaded.tokenizer.decode(new) for stop in stops):
                return new, "stop_string"
    return new, "length"


@pytest.mark.parametrize("budget", [3, 9, 40])
def test_draft_is_the_pilots_greedy_answer_within_its_budget(pair, budget):
    pilot, _ = pair
    settings = WSDSettings(draft_max_tokens=budget)
    d = draft_all(pilot, [MESSAGES], settings)[0]
    ids, reason = free_greedy(pilot, encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, MESSAGES)), budget,
                              settings.draft_stops(pilot))
    assert (d.num_tokens, d.stop_reason) == (len(ids), reason)
    assert d.text == cut_at_stop(pilot.tokenizer.decode(ids, skip_special_tokens=True), settings.draft_stops(pilot))[0]
    assert "<|im_end|>" not in d.text


def test_fixed_length_draft_runs_its_whole_budget(pair):
    d = draft_all(pair[0], [MESSAGES], WSDSettings(draft_max_tokens=9, fixed_length=True))[0]
    assert (d.num_tokens, d.stop_reason) == (9, "length")


def test_check_scores_the_base_tokenization_of_the_draft(pair):
    _, base = pair
    draft_text = "  Sure! The capital of France is Paris. \n"
    c = check_all(base, [MESSAGES], [draft_text])[0]
    prompt_text = base_prompt(MESSAGES, base.tokenizer.bos_token)
    joined = encode(base.tokenizer, (prompt_text + draft_text.strip()).rstrip())
    assert c.prompt_ids + c.draft_ids == joined
    assert c.prompt_ids == encode(base.tokenizer, prompt_text)
    assert base.tokenizer.decode(c.draft_ids) == draft_text.strip()
    with torch.no_grad():
        logprobs = torch.log_softmax(base.model(torch.tensor([joined], device=base.device)).logits[0].float(), dim=-1)
    n = len(c.prompt_ids)
    direct = [logprobs[n - 1 + i, t].exp().item() for i, t in enumerate(c.draft_ids)]
    assert c.token_probs == pytest.approx(direct, rel=1e-5, abs=1e-9)


def test_empty_draft_is_scored_as_nothing(pair):
    _, base = pair
    c = check_all(base, [MESSAGES], [" \n "])[0]
    assert c.draft_ids == [] and c.token_probs == []


def test_continuation_starts_from_kept_ids(pair):
    _, base = pair
    c = check_all(base, [MESSAGES], ["Sure! The capital of France is Paris."])[0]
    kept = c.draft_ids[:4]
    settings = WSDSettings(target_max_tokens=10)
    cont = continue_all(base, [c], [kept], settings)[0]
    ids, reason = free_greedy(base, c.prompt_ids + kept, base_budget(10, 4), settings.base_stops(base))
    assert (cont.ids, cont.stop_reason) == (ids, reason)
    expected = cut_at_stop(base.tokenizer.decode(kept + ids, skip_special_tokens=True), settings.base_stops(base))[0]
    assert cont.response == expected
    assert cont.response.startswith(base.tokenizer.decode(kept, skip_special_tokens=True))


def test_a_kept_draft_that_reaches_a_stop_string_ends_the_answer(pair):
    _, base = pair
    c = check_all(base, [MESSAGES], ["Paris.\n\n[User]\nAnd Rome?"])[0]
    cont = continue_all(base, [c], [c.draft_ids], WSDSettings(target_max_tokens=40))[0]
    assert (cont.ids, cont.response, cont.stop_reason) == ([], "Paris.", "stop_string")


def test_engine_record_is_consistent(pair):
    pilot, base = pair
    record = ReferenceWSD(pilot, base, WSDSettings(window=2, threshold=0.5, draft_max_tokens=10,
                                                   target_max_tokens=12)).generate([MESSAGES])[0]
    assert len(record["base_token_probs"]) == record["base_draft_tokens"]
    assert 0 <= record["keep_count"] <= record["base_draft_tokens"]
    assert record["draft"].strip().startswith(record["accepted_draft"])
    assert record["response"].startswith(record["accepted_draft"])
    assert set(record["seconds"]) == {"draft", "check", "target", "total"}


def test_stop_on_strings_sees_only_new_tokens(pair):
    from wsd.backends.decoding import StopOnStrings

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
    _, base = pair
    prompt = encode(base.tokenizer, "The quick brown fox")
    [free] = base.generate([prompt], [30], ["\x00never"])
    text = base.tokenizer.decode(free.ids)
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the model does produce
    [halted] = base.generate([prompt], [30], [stop])
    assert halted.stop_reason == "stop_string"
    assert len(halted.ids) < len(free.ids)
    assert stop in base.tokenizer.decode(halted.ids)
    assert free.ids[: len(halted.ids)] == halted.ids
