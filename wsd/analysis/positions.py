"""Difficulty by position and what an aligned beginning buys: the likelihoods behind WSD's
premise ("well begun is half done"), which need no judge.

Every aligned answer is scored token by token under a model, in the format that model reads
answers in: the base in the plain role-tagged format WSD hands over in (`base_texts`,
`final_joined_ids`, as WSD's check pass tokenizes a draft), the pilot in its chat template.
A token's numbers are its log-probability and its rank among the vocabulary (1: the model's
top-1), grouped by position bucket (1-4, 5-8, 9-16, ... doubling); intervals resample
whole answers, since the tokens of one answer are not independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsd.backends.decoding import base_texts, encode, final_joined_ids
from wsd.backends.engines import Engine
from wsd.core.prompts import Message, cut_at_stop, pilot_prompt, stop_strings

#: The answer's beginning and its later part that the premise's verdict compares.
BEGINNING = 8  # tokens 1-8
LATER_FROM = 33  # tokens 33 onwards


def bucket_of(position: int) -> int:
    """The bucket of a 1-based answer position: 0 for 1-4, then one per doubling (5-8, 9-16, ...)."""
    if position < 1:
        raise ValueError(f"answer positions start at 1, got {position}")
    return 0 if position <= 4 else math.ceil(math.log2(position)) - 2


def bucket_label(bucket: int) -> str:
    low = 1 if bucket == 0 else 2 ** (bucket + 1) + 1
    return f"{low}-{2 ** (bucket + 2)}"


@dataclass(frozen=True)
class ScoredAnswer:
    """One answer's tokens under one model: log P(token | prompt, earlier tokens) and rank."""

    id: str
    logprobs: list[float]
    ranks: list[int]

    def as_dict(self) -> dict:
        return {"id": self.id, "logprobs": self.logprobs, "ranks": self.ranks}


def scoring_ids(engine: Engine, role: str, messages: list[Message], answer: str) -> tuple[list[int], int]:
    """Prompt + answer token ids in the format `role` reads them, and where the answer starts."""
    if role == "base":
        prompt_text, n_prompt = base_texts(engine, messages)
        return final_joined_ids(engine, prompt_text, answer), n_prompt
    prompt = encode(engine.tokenizer, pilot_prompt(engine.tokenizer, messages))
    return prompt + encode(engine.tokenizer, answer.strip()), len(prompt)


def score_answers(engine: Engine, role: str, items: Sequence[dict], max_answer_tokens: int) -> list[ScoredAnswer]:
    """Each item's (`id`, `messages`, `answer`) first `max_answer_tokens` answer tokens, scored."""
    sequences, starts = [], []
    for item in items:
        ids, start = scoring_ids(engine, role, item["messages"], item["answer"])
        sequences.append(ids[: start + max_answer_tokens])
        starts.append(start)
    scored = engine.token_ranks(sequences, starts)
    return [ScoredAnswer(item["id"], [lp for lp, _ in row], [int(r) for _, r in row])
            for item, row in zip(items, scored)]


def _clustered(values: list[np.ndarray], resamples: int, seed: int) -> dict:
    """Token-level mean over answers (each answer an array of its tokens' values), with a 95%
    interval from resampling whole answers; None where no answer has a token here."""
    kept = [v for v in values if v.size]
    if not kept:
        return None
    sums, counts = np.array([v.sum() for v in kept]), np.array([v.size for v in kept], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(kept), size=(resamples, len(kept)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(sums.sum() / counts.sum()), "low": float(low), "high": float(high),
            "n": len(kept), "tokens": int(counts.sum())}


def difficulty_by_position(answers: list[ScoredAnswer], resamples: int, seed: int) -> list[dict]:
    """Per position bucket: mean log-probability, share of the model's top-1 tokens, mean
    reciprocal rank (each with its interval over answers) and the median rank."""
    if not answers:
        raise ValueError("no scored answers")
    buckets = max(bucket_of(len(a.logprobs)) for a in answers if a.logprobs) + 1
    rows = []
    for b in range(buckets):
        per_answer = [[i for i in range(len(a.logprobs)) if bucket_of(i + 1) == b] for a in answers]
        logprob = [np.array([a.logprobs[i] for i in idx]) for a, idx in zip(answers, per_answer)]
        ranks = [np.array([a.ranks[i] for i in idx], dtype=float) for a, idx in zip(answers, per_answer)]
        every_rank = np.concatenate(ranks)
        rows.append({"bucket": bucket_label(b),
                     "logprob": _clustered(logprob, resamples, seed),
                     "top1": _clustered([(r == 1).astype(float) for r in ranks], resamples, seed),
                     "reciprocal_rank": _clustered([1.0 / r for r in ranks], resamples, seed),
                     "median_rank": float(np.median(every_rank))})
    return rows


def premise_verdict(answers: list[ScoredAnswer], resamples: int, seed: int) -> dict:
    """Is the beginning harder than the later part? Per answer long enough to have both, the
    mean log-probability of tokens `LATER_FROM`.. minus that of tokens 1..`BEGINNING`, with a
    bootstrap interval over answers: the beginning is clearly harder when the interval is
    above 0, clearly easier when below, else not told apart."""
    gaps = np.array([np.mean(a.logprobs[LATER_FROM - 1:]) - np.mean(a.logprobs[:BEGINNING])
                     for a in answers if len(a.logprobs) >= LATER_FROM])
    if gaps.size == 0:
        return {"gap": None, "verdict": f"no answer has {LATER_FROM} tokens"}
    rng = np.random.default_rng(seed)
    means = gaps[rng.integers(0, gaps.size, size=(resamples, gaps.size))].mean(axis=1)
    low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    verdict = ("the beginning is clearly harder" if low > 0 else "the beginning is clearly easier" if high < 0
               else "beginning and later tokens are not told apart")
    return {"gap": {"mean": float(gaps.mean()), "low": low, "high": high, "n": int(gaps.size)},
            "verdict": verdict, "beginning": f"1-{BEGINNING}", "later": f"{LATER_FROM}-"}


def prefix_curve(answers: list[ScoredAnswer], prefix_tokens: Sequence[int], resamples: int,
                 seed: int) -> tuple[list[dict], list[str]]:
    """Perplexity of the rest of each answer given its first m tokens, for every m, over the
    answers longer than the largest m (the same answers at every m). Teacher-forced, the rest's
    log-probabilities given the first m tokens are the full pass's at positions m.. . Also
    the ids of the answers it covers."""
    longest = max(prefix_tokens)
    kept = [a for a in answers if len(a.logprobs) > longest]
    if not kept:
        raise ValueError(f"no answer is longer than {longest} tokens, the largest of analysis.prefix_tokens")
    rows = []
    for m in prefix_tokens:
        nll = _clustered([-np.array(a.logprobs[m:]) for a in kept], resamples, seed)
        rows.append({"m": m, "perplexity": {"mean": math.exp(nll["mean"]), "low": math.exp(nll["low"]),
                                            "high": math.exp(nll["high"]), "n": nll["n"]},
                     "rest_tokens": nll["tokens"]})
    return rows, [a.id for a in kept]


def continuation_requests(base: Engine, items: Sequence[dict], prefix_tokens: Sequence[int],
                          continuation_tokens: int) -> list[dict]:
    """For every item and m: the base prompt + the answer's first m tokens (base tokenization),
    and the reference's next `continuation_tokens` tokens as text to compare the base's own
    greedy continuation with."""
    requests = []
    for item in items:
        ids, start = scoring_ids(base, "base", item["messages"], item["answer"])
        answer = ids[start:]
        for m in prefix_tokens:
            rest = answer[m : m + continuation_tokens]
            requests.append({"id": item["id"], "m": m, "prompt_ids": ids[: start + m],
                             "reference_rest": base.tokenizer.decode(rest, skip_special_tokens=True)})
    return requests


def greedy_continuations(base: Engine, requests: list[dict], batch_size: int, max_tokens: int) -> list[str]:
    """The base's own greedy continuation of each request's prompt, in the base format's stop
    strings (the next role tag ends it), `batch_size` prompts per call."""
    stops = stop_strings("base", base.tokenizer)
    texts = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        generated = base.generate([r["prompt_ids"] for r in batch], [max_tokens] * len(batch), stops)
        texts += [cut_at_stop(base.tokenizer.decode(g.ids, skip_special_tokens=True), stops)[0] for g in generated]
    return texts
