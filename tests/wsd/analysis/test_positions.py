"""Difficulty by position and the prefix curve on the tiny models, against brute force."""

import math

import numpy as np
import pytest
import torch

from tests.conftest import CORPUS, QUESTIONS
from wsd.analysis import positions
from wsd.analysis.positions import ScoredAnswer, bucket_label, bucket_of

ITEMS = [{"id": f"q{i}", "messages": [{"role": "user", "content": q}], "answer": a}
         for i, (q, a) in enumerate(zip(QUESTIONS, CORPUS))]
# answers neither model learnt for these questions: ranks past the top-1
MISMATCHED = [{**item, "id": f"m{i}", "answer": CORPUS[(i + 3) % len(CORPUS)]} for i, item in enumerate(ITEMS)]


def test_position_buckets_double():
    assert [bucket_of(p) for p in (1, 4, 5, 8, 9, 16, 17, 32, 33, 512, 513)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 7, 8]
    assert [bucket_label(b) for b in range(4)] == ["1-4", "5-8", "9-16", "17-32"]
    with pytest.raises(ValueError, match="start at 1"):
        bucket_of(0)


def brute_force(engine, ids: list[int], start: int) -> list[tuple[float, int]]:
    """Every answer token's log-probability from a full forward, and its rank by sorting the
    whole vocabulary (ties counted in the token's favour's opposite: as vLLM does, >=)."""
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids])).logits[0].float()
    out = []
    for j in range(start, len(ids)):
        logprobs = torch.log_softmax(logits[j - 1], dim=-1)
        order = torch.argsort(logprobs, descending=True).tolist()
        target = logprobs[ids[j]]
        rank = order.index(ids[j]) + 1 + sum(1 for t in order[order.index(ids[j]) + 1:] if logprobs[t] == target)
        out.append((float(target), rank))
    return out


@pytest.mark.parametrize("role", ["base", "pilot"])
def test_token_scores_and_ranks_equal_a_brute_force_computation(tiny_pair, role):
    engine = dict(zip(("pilot", "base"), tiny_pair))[role]
    scored = positions.score_answers(engine, role, ITEMS + MISMATCHED, max_answer_tokens=12)
    for item, answer in zip(ITEMS + MISMATCHED, scored):
        ids, start = positions.scoring_ids(engine, role, item["messages"], item["answer"])
        want = brute_force(engine, ids[: start + 12], start)
        assert answer.ranks == [r for _, r in want]
        assert np.allclose(answer.logprobs, [lp for lp, _ in want], atol=1e-4)
        assert 0 < len(answer.ranks) <= 12
    assert any(r > 1 for a in scored for r in a.ranks) and any(r == 1 for a in scored for r in a.ranks)


def test_the_base_reads_answers_as_wsd_hands_them_over(tiny_pair):
    """The base's answer tokens are WSD's check pass's: its probabilities are `score`'s."""
    _, base = tiny_pair
    [answer] = positions.score_answers(base, "base", ITEMS[:1], max_answer_tokens=100)
    ids, start = positions.scoring_ids(base, "base", ITEMS[0]["messages"], ITEMS[0]["answer"])
    assert np.allclose(np.exp(answer.logprobs), base.score([ids], [start])[0], rtol=1e-5)
    assert base.tokenizer.decode(ids[start:]).strip() == ITEMS[0]["answer"]


def test_buckets_aggregate_every_answers_tokens():
    answers = [ScoredAnswer("a", [-1.0] * 4 + [-3.0] * 4 + [-0.5], [1, 1, 2, 3, 5, 1, 1, 1, 2]),
               ScoredAnswer("b", [-2.0] * 6, [2] * 6)]
    rows = positions.difficulty_by_position(answers, resamples=200, seed=0)
    assert [r["bucket"] for r in rows] == ["1-4", "5-8", "9-16"]
    first, second, third = rows
    assert first["logprob"]["mean"] == pytest.approx((4 * -1.0 + 4 * -2.0) / 8)
    assert first["top1"]["mean"] == pytest.approx(2 / 8) and first["logprob"]["tokens"] == 8
    assert second["logprob"]["mean"] == pytest.approx((4 * -3.0 + 2 * -2.0) / 6)
    assert second["reciprocal_rank"]["mean"] == pytest.approx((1 / 5 + 3 + 2 * 0.5) / 6)
    assert third["logprob"]["n"] == 1 and third["median_rank"] == 2
    assert first["logprob"]["low"] <= first["logprob"]["mean"] <= first["logprob"]["high"]


def test_the_premise_verdict_reads_the_interval_of_the_gap():
    hard_start = [ScoredAnswer(str(i), [-4.0 - i / 10] * 8 + [-1.0] * 40, [9] * 48) for i in range(6)]
    easy_start = [ScoredAnswer(str(i), [-0.5] * 8 + [-2.0 - i / 10] * 40, [1] * 48) for i in range(6)]
    assert positions.premise_verdict(hard_start, 500, 0)["verdict"] == "the beginning is clearly harder"
    assert positions.premise_verdict(easy_start, 500, 0)["verdict"] == "the beginning is clearly easier"
    short = positions.premise_verdict([ScoredAnswer("s", [-1.0] * 10, [1] * 10)], 500, 0)
    assert short["gap"] is None


def test_the_prefix_curve_at_m_0_is_the_whole_answers_perplexity(tiny_pair):
    _, base = tiny_pair
    scored = positions.score_answers(base, "base", ITEMS, max_answer_tokens=200)
    curve, covered = positions.prefix_curve(scored, [0, 2, 4], resamples=200, seed=0)
    long_enough = [item for item, s in zip(ITEMS, scored) if len(s.logprobs) > 4]
    assert covered == [item["id"] for item in long_enough]
    nll, tokens = 0.0, 0
    for item in long_enough:  # the whole answer's perplexity, from `score`, pooled over answers
        ids, start = positions.scoring_ids(base, "base", item["messages"], item["answer"])
        probs = base.score([ids], [start])[0]
        nll -= sum(math.log(p) for p in probs)
        tokens += len(probs)
    assert curve[0]["perplexity"]["mean"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert curve[0]["rest_tokens"] == tokens and curve[2]["rest_tokens"] == tokens - 4 * len(long_enough)
    with pytest.raises(ValueError, match="longer than 400 tokens"):
        positions.prefix_curve(scored, [0, 400], resamples=10, seed=0)


def test_continuation_requests_hold_the_first_m_answer_tokens(tiny_pair):
    _, base = tiny_pair
    requests = positions.continuation_requests(base, ITEMS[:2], [0, 3], continuation_tokens=4)
    ids, start = positions.scoring_ids(base, "base", ITEMS[0]["messages"], ITEMS[0]["answer"])
    assert [(r["id"], r["m"]) for r in requests] == [("q0", 0), ("q0", 3), ("q1", 0), ("q1", 3)]
    assert requests[1]["prompt_ids"] == ids[: start + 3]
    assert requests[1]["reference_rest"] == base.tokenizer.decode(ids[start + 3 : start + 7], skip_special_tokens=True)
    texts = positions.greedy_continuations(base, requests, batch_size=3, max_tokens=5)
    alone = positions.greedy_continuations(base, requests[1:2], batch_size=1, max_tokens=5)
    assert len(texts) == 4 and texts[1] == alone[0]
