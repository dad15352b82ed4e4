"""The stage of an answer at WSD's switch: the rule's reading and the judge's parsed reply."""

import pytest

from wsd.analysis.switch_stages import (
    ANSWER_STAGES,
    parse_stage,
    rubric_messages,
    rule_stage,
    stage_shares,
    switch_rows,
)


@pytest.mark.parametrize("kept, stage", [
    ("", "opening"),
    ("Sure! Here is how to bake bread.", "opening"),
    ("Baking bread takes patience. The dough must rise twice", "analysis"),
    ("Baking bread takes patience.\nYou need flour and time", "analysis"),
    ("Here are the steps:", "structure"),
    ("Here are the steps:\n\n1. Mix the flour", "structure"),
    ("Some context.\n\n## Ingredients", "structure"),
    ("Steps:\n1. Mix the flour\n2. Knead", "body"),
    ("Steps:\n- Mix the flour\n- Knead the dough\nThen let it rest", "body"),
    ("Bread is simple.\nIn conclusion, practice", "closing"),
])
def test_the_rule_reads_the_shape_of_the_kept_text(kept, stage):
    assert rule_stage(kept) == stage


def test_the_judges_reply_is_parsed_to_the_first_stage_it_names():
    assert parse_stage("Structure.") == "structure"
    assert parse_stage("The cut falls in the body, not the closing") == "body"
    assert parse_stage("I think it is question ANALYSIS") == "analysis"
    assert parse_stage("structured") is None and parse_stage("") is None


def test_the_rubric_shows_the_question_the_kept_text_and_every_stage():
    [message] = rubric_messages("How do I bake bread?", "Here are the steps:\n")
    for text in ("How do I bake bread?", "Here are the steps:", *ANSWER_STAGES):
        assert text in message["content"]


def test_switch_rows_and_shares():
    records = [
        {"id": "a", "switched": True, "keep_count": 4, "continuation_tokens": 12, "accepted_draft": "Steps:\n",
         "messages": [{"role": "user", "content": "q1"}]},
        {"id": "b", "switched": False, "keep_count": 20, "continuation_tokens": 0, "accepted_draft": "All of it.",
         "messages": [{"role": "user", "content": "q2"}]},
    ]
    rows = switch_rows(records)
    assert [(r["k"], r["share"], r["last_line"], r["rule_stage"]) for r in rows] == [
        (4, 0.25, "Steps:", "structure"), (20, 1.0, "All of it.", "opening")]
    shares = stage_shares(["structure", "structure", "body", None])
    assert shares["classified"] == 3 and shares["of"] == 4
    assert shares["shares"]["structure"] == pytest.approx(2 / 3) and shares["shares"]["closing"] == 0
    assert stage_shares([None])["shares"]["body"] is None
