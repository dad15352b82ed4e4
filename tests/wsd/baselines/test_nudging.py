"""Nudging on the tiny pair (different tokenizers): the threshold decides who writes."""

import pytest
import torch

from tests.conftest import tolerance
from wsd.backends.engines import PrefixCachedLM
from wsd.baselines.nudging import Nudging
from wsd.baselines.prompted import PromptedModel
from wsd.core.prompts import base_prompt
from wsd.core.schemas import GenerationBlock
from wsd.data.prompt_sets import Prompt

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_sure_base_writes_everything_and_matches_the_base_baseline(tiny_pair):
    """Threshold near 0: the base is never unsure, so nobody nudges and the answer is the
    base model's own greedy answer."""
    pilot, base = tiny_pair
    record = Nudging(pilot, base, max_new_tokens=16, fixed_length=False, threshold=1e-9).generate(MESSAGES)
    assert record["handovers"] == 0 and record["pilot_char_share"] == 0.0
    baseline = PromptedModel(base, lambda m: base_prompt(m, base.tokenizer.bos_token), "base",
                             GenerationBlock(max_new_tokens=16))
    [(_, expected)] = list(baseline.generate_many([Prompt("x", MESSAGES)]))
    assert record["response"] == expected["response"]


def test_an_unsure_base_hands_every_word_to_the_pilot(tiny_pair):
    """Threshold 1: the base is always unsure, so the pilot writes word after word."""
    pilot, base = tiny_pair
    record = Nudging(pilot, base, max_new_tokens=16, fixed_length=False, threshold=1.0).generate(MESSAGES)
    assert record["handovers"] >= 2 and record["base_tokens"] == 0
    assert record["pilot_char_share"] == 1.0
    assert record["response"].startswith("".join(record["pilot_words"])[: len(record["response"])])
    assert all(w.strip() and " " not in w.strip() for w in record["pilot_words"][:-1])  # one word each


def test_budget_is_respected_in_base_tokens(tiny_pair):
    pilot, base = tiny_pair
    for threshold in (0.3, 0.6, 1.0):
        record = Nudging(pilot, base, max_new_tokens=10, fixed_length=True, threshold=threshold).generate(MESSAGES)
        assert record["response_tokens"] <= 10


def test_prefix_cache_gives_full_forward_logits_after_retokenization(tiny_pair):
    """Feeding a sequence whose tail changed (as re-tokenized text does) crops the cache to
    the common prefix: logits equal a fresh forward of the whole sequence."""
    _, base = tiny_pair
    lm = PrefixCachedLM(base)
    ids = base.tokenizer("The capital of France is Paris", add_special_tokens=False)["input_ids"]
    lm.next_logits(ids)
    changed = ids[:-2] + base.tokenizer(" Rome and", add_special_tokens=False)["input_ids"]
    cached = lm.next_logits(changed)
    with torch.inference_mode():
        full = base.model(input_ids=torch.tensor([changed], device=base.device)).logits[0, -1].float()
    torch.testing.assert_close(cached, full, atol=tolerance(base), rtol=tolerance(base))


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_prefix_caches_do_not_change_the_answer(tiny_pair, monkeypatch, threshold):
    """Both models' re-tokenized, cropped caches give the answer that full forwards of the
    whole text at every step give."""
    pilot, base = tiny_pair
    cached = Nudging(pilot, base, 16, False, threshold=threshold).generate(MESSAGES)

    @torch.inference_mode()
    def full_forward(self, ids):
        return self.loaded.model(input_ids=torch.tensor([ids], device=self.loaded.device)).logits[0, -1].float()

    monkeypatch.setattr(PrefixCachedLM, "next_logits", full_forward)
    uncached = Nudging(pilot, base, 16, False, threshold=threshold).generate(MESSAGES)
    assert cached["handovers"] > 0 or threshold < 0.5  # the high threshold makes the pilot write
    assert {k: cached[k] for k in ("response", "pilot_words", "base_tokens")} == \
        {k: uncached[k] for k in ("response", "pilot_words", "base_tokens")}


class _AsyncProbing:
    """An HF engine behind the async engine's `aprobe`, which yields to the loop before each
    probe, so prompts running at once interleave their handovers."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def aprobe(self, ids, max_tokens, min_prob=0.0):
        import asyncio

        await asyncio.sleep(0)
        return self.engine.probe(ids, max_tokens, min_prob)


@pytest.mark.parametrize("scheduling", ["per_request", "lockstep"])
def test_prompts_nudged_together_get_the_one_at_a_time_records_in_order(tiny_pair, scheduling):
    """Three prompts, their probes interleaved (each thrashing the other prompts' cached
    prefix): two pipelines at once on an async engine, or all three in lockstep rounds (one
    `probe_many` per engine and round): the records one prompt at a time gives."""
    pilot, base = tiny_pair
    prompts = [Prompt(str(i), [{"role": "user", "content": text}])
               for i, text in enumerate(["What is the capital of France?", "Name a colour.", "Count to three."])]
    alone = [r for _, r in Nudging(pilot, base, 16, False, threshold=0.3).generate_many(prompts)]
    if scheduling == "per_request":
        together = Nudging(_AsyncProbing(pilot), _AsyncProbing(base), 16, False, threshold=0.3, max_in_flight=2)
    else:
        together = Nudging(pilot, base, 16, False, threshold=0.3, batch_size=3)
    got = list(together.generate_many(prompts))
    assert [p.id for p, _ in got] == ["0", "1", "2"]
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for _, r in got] == \
        [{k: v for k, v in r.items() if k not in drop} for r in alone]
    assert any(r["handovers"] for r in alone)  # the threshold makes the pilot nudge
