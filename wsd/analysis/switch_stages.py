"""Where WSD switches: the switch positions of a WSD run's records, and the stage of the answer
at the switch, read two ways: by rule (line breaks, list markers, sentences) and by a judge
model given one fixed rubric. The paper reports about 90% of switches at the "question
analysis" / "structured answer begins" stages."""

from __future__ import annotations

import re
from collections import Counter

#: The rubric's stages, in the order an answer passes them, with what a judge is told of each.
ANSWER_STAGES = {
    "opening": "an opening or a restatement of the request, before any analysis",
    "analysis": "question analysis: prose that thinks about the request before the answer proper",
    "structure": "the structured answer begins: a heading, the first list item, or a line ending in a colon",
    "body": "inside the body of the answer, after its structure has begun",
    "closing": "the closing: a summary, conclusion or sign-off",
}

_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022+]|\d+[.)]|#{1,6})\s")
_ACKNOWLEDGING = ("sure", "certainly", "of course", "absolutely", "great question", "here", "yes", "okay", "ok")
_CLOSING = ("in conclusion", "in summary", "to summarize", "overall,", "i hope", "let me know", "hope this helps")


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def rule_stage(kept: str) -> str:
    """The stage of an answer whose kept draft is `kept`, read from its shape: a kept text
    ending on a list item, heading or colon starts the structure (or is in the body once two
    such lines are kept); one line of one sentence, or of two opening with an acknowledgement
    ("Sure! ..."), is the opening; a closing cue on the last line is the closing; other prose
    is question analysis."""
    text = kept.rstrip()
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "opening"
    structured = [line for line in lines if _LIST_LINE.match(line)]
    last = lines[-1]
    if _LIST_LINE.match(last) or last.rstrip().endswith(":"):
        return "structure" if len(structured) <= 1 else "body"
    if len(structured) >= 2:
        return "body"
    if last.strip().lower().startswith(_CLOSING):
        return "closing"
    if len(lines) == 1 and (_sentences(text) <= 1 or
                            (_sentences(text) == 2 and text.lower().startswith(_ACKNOWLEDGING))):
        return "opening"
    return "analysis"


def rubric_messages(question: str, kept: str) -> list[dict]:
    """The judge's request: the question, the answer's beginning up to the switch, and the
    rubric; it answers with one stage name."""
    rubric = "\n".join(f"- {name}: {meaning}" for name, meaning in ANSWER_STAGES.items())
    return [{"role": "user", "content": (
        "An assistant's answer was cut at some point. Say at which stage of the answer the cut falls.\n\n"
        f"Stages:\n{rubric}\n\n"
        f"[Question]\n{question.strip()}\n\n[Answer up to the cut]\n{kept.strip()}\n[The cut]\n\n"
        f"Reply with one word, the stage's name: {', '.join(ANSWER_STAGES)}.")}]


def parse_stage(reply: str) -> str | None:
    """The first stage name the judge's reply contains, or None."""
    found = [(m.start(), name) for name in ANSWER_STAGES for m in [re.search(rf"\b{name}\b", reply.lower())] if m]
    return min(found)[1] if found else None


def switch_rows(records: list[dict]) -> list[dict]:
    """Per WSD record: the switch position k (kept draft tokens, base tokenization), its share of
    the answer (k over kept + continuation tokens), the kept text's last line and its rule stage;
    `switched` False where the whole draft was kept."""
    rows = []
    for r in records:
        kept = r["accepted_draft"]
        lines = [line for line in kept.rstrip().split("\n") if line.strip()]
        answer_tokens = r["keep_count"] + r["continuation_tokens"]
        rows.append({"id": r["id"], "switched": bool(r["switched"]), "k": r["keep_count"],
                     "share": r["keep_count"] / answer_tokens if answer_tokens else None,
                     "last_line": lines[-1] if lines else "", "rule_stage": rule_stage(kept),
                     "question": r["messages"][-1]["content"], "kept": kept})
    return rows


def stage_shares(stages: list[str | None]) -> dict:
    """Each stage's share of the classified switches (None: not classified), and how many were."""
    known = [s for s in stages if s is not None]
    counts = Counter(known)
    return {"classified": len(known), "of": len(stages),
            "shares": {name: counts[name] / len(known) if known else None for name in ANSWER_STAGES}}
