"""The analyses' inputs, checked before any model loads: the answers to score (a benchmark's
references, or a finished generate run's responses) and the WSD run whose switches are read."""

from __future__ import annotations

import logging
from pathlib import Path

from eval.judges import reference_for
from wsd.core.store import RunRecords
from wsd.data.prompt_sets import load_benchmark
from wsd.runs import identity as identities

log = logging.getLogger("wsd.analyze")


def answer_items(answers: str, benchmark: dict, limit: int | None) -> list[dict]:
    """(`id`, `messages`, `answer`) per answer, in benchmark order, at most `limit`: the
    benchmark's references, or a finished generate run's responses. A benchmark without
    references, a run that is not finished, and an empty answer are errors."""
    if answers == "reference":
        prompts = load_benchmark({**benchmark, "limit": None})
        items = [{"id": p.id, "messages": list(p.messages), "answer": reference_for(p.meta, 1)} for p in prompts]
        with_reference = [item for item in items if item["answer"] is not None]
        if not with_reference:
            raise ValueError(f"benchmark {benchmark['name']!r} has no reference answers to analyse; use one that has "
                             "(alpaca_eval, mt_bench, or a jsonl file with a 'reference' field), or "
                             "analysis.answers=<the folder of a finished generate run>")
        if len(with_reference) < len(items):
            log.info("%d of %d prompts of %s have a reference answer; the others are left out", len(with_reference),
                     len(items), benchmark["name"])
        return _checked(with_reference[:limit], f"benchmark {benchmark['name']!r}")
    folder = Path(answers).expanduser()
    identities.finished(folder, "generate")
    records = list(RunRecords(folder).done().values())
    items = [{"id": r["id"], "messages": r["messages"], "answer": r["response"]} for r in records
             if r.get("turn", 1) == 1]
    return _checked(items[:limit], f"the generate run at {folder}")


def _checked(items: list[dict], source: str) -> list[dict]:
    if not items:
        raise ValueError(f"{source} has no answers to analyse")
    empty = [item["id"] for item in items if not item["answer"].strip()]
    if empty:
        raise ValueError(f"{source}: {len(empty)} answer(s) are empty (first: {empty[0]!r}); an empty answer has no "
                         "tokens to score")
    return items


def wsd_records(folder: Path) -> list[dict]:
    """The first-turn records of a finished WSD generate run, each with its switch fields."""
    records = [r for r in RunRecords(folder).done().values() if r.get("turn", 1) == 1]
    lacking = [r["id"] for r in records if "keep_count" not in r]
    if lacking:
        raise ValueError(f"the run at {folder} is not a WSD run (record {lacking[0]!r} has no keep_count)")
    return records
