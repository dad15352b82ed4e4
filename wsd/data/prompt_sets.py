"""Prompt sets: the paper's benchmarks (shipped in registry packages, from the Hub, or from a
local file with the Hub's columns) and any user JSONL file.

Every loader validates all prompts before any model is loaded, so a malformed line or an
empty prompt fails in a second with its file and line number, not after an hour of decoding.
Ids are deterministic (derived from the source's own ids or order), so records resume.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from wsd.core.packaged import packaged_file
from wsd.core.prompts import Message, validate_messages
from wsd.core.schemas import benchmark_block


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[Message]
    meta: dict = field(default_factory=dict)  # e.g. a reference answer, the source subset
    followups: tuple[str, ...] = ()  # later user turns, each asked with the earlier answers in context
    turn: int = 1

    @property
    def instruction(self) -> str:
        """The last user turn: what alpaca_eval and the records call the prompt."""
        return self.messages[-1]["content"]

    @property
    def question_id(self) -> str:
        return self.id.split("/turn-")[0]

    @property
    def turn_ids(self) -> list[str]:
        """Ids of this turn and of every follow-up turn still to come."""
        return [self.id] + [f"{self.question_id}/turn-{self.turn + k}" for k in range(1, len(self.followups) + 1)]

    def next_turn(self, answer: str) -> Prompt:
        """The conversation after `answer`, asking the first follow-up (MT-Bench's turn 2)."""
        messages = self.messages + [{"role": "assistant", "content": answer},
                                    {"role": "user", "content": self.followups[0]}]
        return replace(self, id=self.turn_ids[1], messages=messages, followups=self.followups[1:],
                       turn=self.turn + 1)


class BenchmarkUnavailable(ValueError):
    """A Hub benchmark asked for on a machine that cannot reach the Hub."""


# ---------------------------------------------------------------------------------------
# Raw rows: a local file, a registry package, or the Hub


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: each line must be a JSON object")
            rows.append({**row, "_line": number})
    return rows


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local file: JSONL, JSON (a list of objects), Parquet or CSV (the last two
    through `datasets`), or plain text (one prompt per line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: a JSON benchmark file must hold a list of objects")
        return data
    if suffix == ".txt":
        return [{"prompt": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix in (".parquet", ".csv"):
        import datasets

        return list(datasets.load_dataset(suffix[1:], data_files=str(path), split="train"))
    raise ValueError(f"{path}: unsupported file type {suffix!r}; accepted: .jsonl, .json, .parquet, .csv, .txt")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_rows(name: str, hub: dict, schema: str) -> list[dict]:
    """Rows of a Hub dataset (`dataset`, `config`, `split`) or of one file in a Hub dataset
    repository (`repo`, `file`). Offline, the error says which local file to pass instead."""
    where = hub.get("dataset") or f"{hub.get('repo')}/{hub.get('file')}"
    instead = (f"download it where the Hub is reachable and pass benchmark.path=FILE "
               f"(JSONL, JSON, Parquet or CSV with {schema})")
    if _offline():
        raise BenchmarkUnavailable(
            f"benchmark {name!r} reads {where} from the Hugging Face Hub, but this machine is "
            f"offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set); {instead}")
    try:
        if hub.get("file"):
            from huggingface_hub import hf_hub_download

            return read_rows(hf_hub_download(hub["repo"], hub["file"], repo_type="dataset"))
        import datasets

        return list(datasets.load_dataset(hub["dataset"], hub.get("config"), split=hub.get("split", "test")))
    except (OSError, ConnectionError) as err:
        raise BenchmarkUnavailable(f"benchmark {name!r}: could not read {where} from the Hub ({err}); {instead}") from err


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        found = ", ".join(sorted(k for k in row if k != "_line"))
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)}; found {found}")


def _where(source: str, row: dict, index: int) -> str:
    return f"{source}:{row['_line']}" if "_line" in row else f"{source} row {index}"


def _user(text) -> list[Message]:
    return [{"role": "user", "content": text}]


def _to_prompts(rows: list[dict], source: str, required: tuple[str, ...], convert) -> list[Prompt]:
    """Check each row's columns, convert it (`convert(row, index) -> (id, messages, Prompt
    fields)`) and validate the conversation; every error names the file and line (or row)."""
    prompts = []
    for i, row in enumerate(rows):
        where = _where(source, row, i)
        _require(row, required, where)
        try:
            prompt_id, messages, fields = convert(row, i)
            validate_messages(messages)
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{where}: {err}") from None
        prompts.append(Prompt(str(prompt_id), messages, **fields))
    return prompts


# ---------------------------------------------------------------------------------------
# One function per benchmark: rows (with the source's columns) -> prompts


def alpaca_eval_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """AlpacaEval: `instruction`, with the reference `output` (GPT-4-turbo) when present."""
    return _to_prompts(rows, source, ("instruction",), lambda row, i: (
        f"alpaca_eval-{i:03d}", _user(row["instruction"]),
        {"meta": {"dataset": row.get("dataset"), "reference": row.get("output"), "index": i,
                  "reference_generator": row.get("generator")}}))


def arena_hard_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """Arena-Hard: v2 rows `{uid, category, prompt}`, v0.1 rows `{question_id, turns: [{content}]}`."""
    def convert(row, i):
        if "prompt" in row:
            text = row["prompt"]
        elif row.get("turns"):
            first = row["turns"][0]
            text = first["content"] if isinstance(first, dict) else first
        else:
            raise ValueError("needs a 'prompt' (v2) or 'turns' (v0.1) column")
        qid = row.get("uid") or row.get("question_id") or f"{i:03d}"
        meta = {"uid": str(qid), **{k: row[k] for k in ("category", "subcategory") if k in row}}
        return f"arena_hard-{qid}", _user(text), {"meta": meta}

    return _to_prompts(rows, source, (), convert)


def mt_bench_prompts(rows: list[dict], source: str, references: dict | None = None) -> list[Prompt]:
    """MT-Bench: `{question_id, category, turns: [q1, q2]}`; turn 2 is asked after turn 1's
    answer. `references` maps question ids to reference answers (one per turn)."""
    def convert(row, i):
        turns = row["turns"]
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError("'turns' must be a list of non-empty strings")
        reference = (references or {}).get(row["question_id"]) or row.get("reference")
        return (f"mt_bench-{int(row['question_id']):03d}", _user(turns[0]),
                {"meta": {"category": row.get("category"), "reference": reference}, "followups": tuple(turns[1:])})

    return _to_prompts(rows, source, ("question_id", "turns"), convert)


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_transcript(text: str) -> list[Message]:
    """HH-RLHF's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as messages."""
    parts = _HH_TURN.split(text)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[j]], "content": parts[j + 1].strip()} for j in range(1, len(parts) - 1, 2)]


def hh_rlhf_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """HH-RLHF: the `chosen` transcript up to its last human turn is the prompt; the last
    assistant turns of `chosen` and `rejected` are kept for reward-model comparisons."""
    def convert(row, i):
        chosen, rejected = hh_transcript(row["chosen"]), hh_transcript(row["rejected"])
        if len(chosen) < 2 or chosen[-1]["role"] != "assistant":
            raise ValueError("'chosen' must be a Human/Assistant transcript ending with an Assistant turn")
        meta = {"chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"] if rejected else None}
        return f"hh_rlhf-{i:04d}", chosen[:-1], {"meta": meta}

    return _to_prompts(rows, source, ("chosen", "rejected"), convert)


def truthfulqa_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """TruthfulQA (generation): `question`, with `best_answer`, `correct_answers`,
    `incorrect_answers` kept for judges."""
    kept = ("category", "best_answer", "correct_answers", "incorrect_answers", "source")
    return _to_prompts(rows, source, ("question",), lambda row, i: (
        f"truthfulqa-{i:03d}", _user(row["question"]), {"meta": {k: row[k] for k in kept if k in row}}))


def harmful_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """Harmful requests: `prompt`, with `source` (harmbench, donotanswer) and `category`;
    ids count within each source."""
    counters = Counter()

    def convert(row, i):
        origin = row.get("source", "file")
        counters[origin] += 1
        return (f"harmful-{origin}-{counters[origin] - 1:03d}", _user(row["prompt"]),
                {"meta": {"source": origin, "category": row.get("category")}})

    return _to_prompts(rows, source, ("prompt",), convert)


def ifeval_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """IFEval: `{key, prompt, instruction_id_list, kwargs}`, the last two kept for the checks."""
    return _to_prompts(rows, source, ("key", "prompt", "instruction_id_list", "kwargs"), lambda row, i: (
        f"ifeval-{row['key']}", _user(row["prompt"]),
        {"meta": {k: row[k] for k in ("key", "instruction_id_list", "kwargs")}}))


def jsonl_prompts(rows: list[dict], source: str) -> list[Prompt]:
    """`{"id", "prompt"}`, `{"instruction"}` or `{"messages": [...]}` per row; ids default to line numbers."""
    seen = {}

    def convert(row, i):
        if "messages" in row:
            messages = [dict(m) if isinstance(m, dict) else m for m in row["messages"]]
        else:
            key = next((k for k in ("prompt", "instruction") if k in row), None)
            if key is None:
                raise ValueError("needs a 'prompt' or 'instruction' string (or a 'messages' list)")
            if not isinstance(row[key], str):
                raise ValueError(f"'{key}' must be a string")
            messages = _user(row[key])
        prompt_id = str(row.get("id", f"line-{row.get('_line', i + 1)}"))
        if prompt_id in seen:
            raise ValueError(f"duplicate id {prompt_id!r} (first at {seen[prompt_id]})")
        seen[prompt_id] = _where(source, row, i)
        meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "instruction", "messages", "_line")}
        return prompt_id, messages, {"meta": meta}

    return _to_prompts(rows, source, (), convert)


# ---------------------------------------------------------------------------------------
# Packaged data (read by path from registry packages installed with --no-deps)


def _packaged_rows(cfg: dict) -> list[dict]:
    return read_rows(packaged_file(cfg["package"], cfg["file"]))


def _mt_bench_references(cfg: dict) -> dict:
    """Reference answers per question id (FastChat's `reference_answer/*.jsonl`)."""
    if not cfg.get("reference_file"):
        return {}
    rows = read_rows(packaged_file(cfg["package"], cfg["reference_file"]))
    return {r["question_id"]: r["choices"][0]["turns"] for r in rows}


def _harmful_packaged_rows(cfg: dict) -> list[dict]:
    """HarmBench's standard behaviours, then Do-Not-Answer's files, one category each."""
    rows = [{**r, "source": "harmbench", "category": None}
            for r in read_rows(packaged_file(cfg["package"], cfg["harmbench_file"]))]
    folder = packaged_file(cfg["package"], cfg["donotanswer_folder"])
    for path in sorted(folder.glob("*.jsonl")):
        rows += [{"prompt": r["prompt"], "source": "donotanswer", "category": path.stem} for r in read_rows(path)]
    return rows


@dataclass(frozen=True)
class Benchmark:
    to_prompts: Callable[..., list[Prompt]]
    schema: str  # what a local file needs, for error messages
    sources: tuple[str, ...]  # where it can come from beside a local `path`
    packaged: Callable[[dict], list[dict]] | None = None
    # what its prompts carry for judges: "reference" answers, IFEval's "instructions";
    # None for a local file of any shape (known only once it is read)
    provides: frozenset[str] | None = frozenset()


REFERENCE = frozenset({"reference"})

BENCHMARKS = {
    "alpaca_eval": Benchmark(alpaca_eval_prompts, "an 'instruction' column (and 'output' references)",
                             ("packaged", "hub"), _packaged_rows, REFERENCE),
    "arena_hard": Benchmark(arena_hard_prompts, "'uid' and 'prompt' columns (v2) or 'question_id' and 'turns' (v0.1)",
                            ("packaged", "hub"), _packaged_rows, frozenset({"baseline"})),
    # references for its math, reasoning and coding questions only
    "mt_bench": Benchmark(mt_bench_prompts, "'question_id' and 'turns' columns", ("packaged",), _packaged_rows,
                          REFERENCE),
    "hh_rlhf": Benchmark(hh_rlhf_prompts, "'chosen' and 'rejected' transcript columns", ("hub",), provides=REFERENCE),
    "truthfulqa": Benchmark(truthfulqa_prompts, "a 'question' column", ("hub",), provides=REFERENCE),
    "harmful": Benchmark(harmful_prompts, "a 'prompt' column (and optional 'source', 'category')",
                         ("packaged",), _harmful_packaged_rows),
    "ifeval": Benchmark(ifeval_prompts, "'key', 'prompt', 'instruction_id_list' and 'kwargs' columns",
                        ("packaged", "hub"), _packaged_rows, frozenset({"instructions"})),
    "jsonl": Benchmark(jsonl_prompts, "'prompt', 'instruction' or 'messages' per line", (), provides=None),
}


def benchmark_provides(name: str) -> frozenset[str] | None:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; accepted: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name].provides


def load_benchmark(cfg) -> list[Prompt]:
    """Prompts of a `benchmark` config group entry: from `path` when set, else from its
    `source`; then the first `limit` of them, or a `subset_seed`-seeded random `limit` of them
    (kept in benchmark order)."""
    cfg = dict(cfg)
    name, limit, subset_seed = cfg.get("name"), cfg.get("limit"), cfg.get("subset_seed")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; accepted: {', '.join(sorted(BENCHMARKS))}")
    benchmark_block(cfg)
    bench = BENCHMARKS[name]
    if cfg.get("path"):
        source = str(cfg["path"])
        rows = read_rows(cfg["path"])
    else:
        source = cfg.get("source")
        if source not in bench.sources:
            accepted = ", ".join(bench.sources) or "none: set benchmark.path"
            raise ValueError(f"benchmark {name!r}: unknown source {source!r}; accepted: {accepted}")
        rows = bench.packaged(cfg) if source == "packaged" else hub_rows(name, cfg["hub"], bench.schema)
    if not rows:
        raise ValueError(f"benchmark {name!r} ({source}) holds no prompts")
    extra = {"references": _mt_bench_references(cfg)} if name == "mt_bench" and source == "packaged" else {}
    prompts = bench.to_prompts(rows, source, **extra)
    if limit is None or limit >= len(prompts):
        return prompts
    if subset_seed is None:
        return prompts[:limit]
    chosen = sorted(random.Random(subset_seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in chosen]
