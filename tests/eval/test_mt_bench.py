import pytest

from eval.mt_bench import MTBenchGradingJudge, parse_rating


@pytest.mark.parametrize("judgment, rating", [
    ("The answer is accurate and complete. Rating: [[8]]", 8.0),
    ("Rating: [[7.5]]", 7.5),
    ("[[9]] first, then a second [[2]]", 9.0),  # FastChat takes the first
    ("No double brackets, but [6] here", 6.0),  # its single-bracket fallback
    ("Rating: 7 out of 10", None),  # unparseable: FastChat's -1, left out of the means
    ("", None),
    ("[[eight]]", None),
])
def test_ratings_parse_as_fastchat_does(judgment, rating):
    assert parse_rating(judgment) == rating


def _items():
    writing = {"id": "mt_bench-081", "turn": 1, "prompt": "Write a haiku.", "response": "Leaves fall.",
               "messages": [{"role": "user", "content": "Write a haiku."}],
               "meta": {"category": "writing", "reference": ["(inline reference, not used)"]}}
    math = {"id": "mt_bench-111", "turn": 1, "prompt": "What is 2+2?", "response": "5",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "meta": {"category": "math", "reference": ["4", "6"]}}
    math_2 = {"id": "mt_bench-111/turn-2", "turn": 2, "prompt": "And 3+3?", "response": "6",
              "messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"},
                           {"role": "user", "content": "And 3+3?"}],
              "meta": {"category": "math", "reference": ["4", "6"]}}
    return [writing, math, math_2]


def test_fastchat_prompts_by_category_and_turn(stand_in, tmp_path):
    verdicts = {"single-v1": "Rating: [[9]]", "single-math-v1": "Wrong. Rating: [[2]]",
                "single-math-v1-multi-turn": "I cannot rate this."}

    def reply(body):
        user = body["messages"][1]["content"]
        if "Reference Answer" not in user and "Reference answer" not in user:
            return verdicts["single-v1"]
        return verdicts["single-math-v1-multi-turn" if "to the second question" in body["messages"][0]["content"]
                        else "single-math-v1"]

    url, server = stand_in(reply)
    judge = MTBenchGradingJudge(endpoint=url, client={"model": "judge"}, folder=str(tmp_path), max_tokens=64)
    with judge.session():
        scores = judge.score(_items())
    assert [s["judge_prompt"] for s in scores] == ["single-v1", "single-math-v1", "single-math-v1-multi-turn"]
    assert [s["rating"] for s in scores] == [9.0, 2.0, None]
    assert scores[0]["rating_turn_1"] == 9.0 and scores[2]["rating_turn_2"] is None and scores[2]["parsed"] == 0.0
    assert scores[2]["judgment"] == "I cannot rate this."  # the raw verdict kept with the score
    asked = {b["messages"][1]["content"]: b for b in server.chats()}
    writing, math, math_2 = (next(b for text, b in asked.items() if needle in text)
                             for needle in ("Write a haiku", "[Question]\nWhat is 2+2?", "And 3+3?"))
    assert writing["messages"][0]["content"] == "You are a helpful assistant."
    assert "(inline reference" not in writing["messages"][1]["content"]  # writing is graded without one
    assert "[The Start of Reference Answer]\n4\n" in math["messages"][1]["content"]
    turn_2 = math_2["messages"][1]["content"]  # both turns, the method's own turn-1 answer, both references
    assert "### User:\nWhat is 2+2?\n\n### Assistant A:\n5\n\n### User:\nAnd 3+3?\n\n### Assistant A:\n6" in turn_2
    assert "### User:\nAnd 3+3?\n\n### Reference answer:\n6" in turn_2
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 64 and b["model"] == "judge" for b in server.chats())


def test_a_reference_category_without_a_reference_fails_before_judging(tmp_path):
    judge = MTBenchGradingJudge(endpoint="http://127.0.0.1:1/v1", client={"model": "judge"})
    item = {**_items()[1], "meta": {"category": "coding", "reference": None}}
    with pytest.raises(ValueError, match="grades 'coding' questions against a reference answer"):
        judge.check_items([_items()[0], item])
    judge.check_items(_items())
