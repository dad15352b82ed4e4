"""Prompt sets: a user's JSONL file, or a benchmark shipped in a registry package.

Every loader validates all prompts before any model is loaded, so a malformed line or an
empty prompt fails in a second with its file and line number, not after an hour of decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from wsd.packaged import packaged_file
from wsd.prompts import Message, validate_messages


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[Message]
    meta: dict = field(default_factory=dict)  # e.g. a reference answer, the source subset

    @property
    def instruction(self) -> str:
        """The last user turn: what alpaca_eval and the records call the prompt."""
        return self.messages[-1]["content"]


def _messages_from_row(row: dict) -> list[Message]:
    if "messages" in row:
        return [dict(m) for m in row["messages"]]
    for key in ("prompt", "instruction"):
        if key in row:
            if not isinstance(row[key], str):
                raise ValueError(f"'{key}' must be a string")
            return [{"role": "user", "content": row[key]}]
    raise ValueError("needs a 'prompt' or 'instruction' string (or a 'messages' list)")


def load_jsonl(path: str | Path) -> list[Prompt]:
    """`{"id", "prompt"}`, `{"instruction"}` or `{"messages": [...]}` per line; ids default to line numbers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    prompts, seen = [], {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: each line must be a JSON object")
            try:
                messages = _messages_from_row(row)
                validate_messages(messages)
            except (ValueError, TypeError, AttributeError) as err:
                raise ValueError(f"{where}: {err}") from None
            prompt_id = str(row.get("id", f"line-{number}"))
            if prompt_id in seen:
                raise ValueError(f"{where}: duplicate id {prompt_id!r} (first on line {seen[prompt_id]})")
            seen[prompt_id] = number
            meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "instruction", "messages")}
            prompts.append(Prompt(prompt_id, messages, meta))
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts")
    return prompts


def load_alpaca_eval(package: str, file: str) -> list[Prompt]:
    """AlpacaEval's 805 instructions with their GPT-4-turbo reference outputs."""
    rows = json.loads(packaged_file(package, file).read_text(encoding="utf-8"))
    return [
        Prompt(
            id=f"alpaca_eval-{i:03d}",
            messages=[{"role": "user", "content": row["instruction"]}],
            meta={"dataset": row.get("dataset"), "reference": row.get("output"),
                  "reference_generator": row.get("generator")},
        )
        for i, row in enumerate(rows)
    ]


LOADERS = {"jsonl": load_jsonl, "alpaca_eval": load_alpaca_eval}


def load_benchmark(cfg) -> list[Prompt]:
    """Prompts of the `benchmark` config group entry, first `limit` of them if set."""
    cfg = dict(cfg)
    name, limit = cfg.pop("name"), cfg.pop("limit", None)
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; accepted: {', '.join(sorted(LOADERS))}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"benchmark.limit must be a positive integer or null, got {limit!r}")
    prompts = LOADERS[name](**cfg)
    return prompts[:limit] if limit else prompts
