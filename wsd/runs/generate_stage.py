"""The generate stage's parts: this process's shard of a run, decoding every turn of a
benchmark's questions into records, the run's statistics, and what it writes beside the
records (alpaca_eval's model outputs, a terminal table)."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections import Counter
from pathlib import Path

from wsd.backends.models import ModelSpec, resolve_device
from wsd.core.store import RunRecords, write_atomic
from wsd.data.prompt_sets import Prompt
from wsd.methods import method_entry


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of a run: rank r of n takes every n-th question."""

    rank: int = 0
    world: int = 1
    device: str | None = None  # the accelerator of this rank, when models go to one

    def barrier(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current_shard() -> Shard:
    """Rank and world size from `accelerate launch` / torchrun (gloo on CPU, nccl on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    device = str(state.device) if state.device.type != "cpu" else None
    return Shard(state.process_index, state.num_processes, device)


def placed(spec: ModelSpec, shard: Shard) -> ModelSpec:
    """On a sharded GPU run, each rank puts a single-device model on its own GPU."""
    if shard.device and spec.device_map is None and resolve_device(spec.device).startswith("cuda"):
        return dataclasses.replace(spec, device=shard.device)
    return spec


def summarize(records: list[dict], method: str) -> dict:
    """Per-run statistics: lengths, time and throughput for every method, then the method's
    own (its registration's `summary`: WSD's switch, nudging's handovers)."""
    def mean(values):
        values = list(values)
        return statistics.fmean(values) if values else 0.0

    seconds = sum(r["seconds"]["total"] for r in records)
    tokens = sum(r["response_tokens"] for r in records)
    summary = {
        "prompts": len(records),
        "mean_response_tokens": mean(r["response_tokens"] for r in records),
        "mean_response_chars": mean(len(r["response"]) for r in records),
        "seconds_total": seconds,
        "mean_seconds": seconds / len(records) if records else 0.0,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "stop_reasons": dict(Counter(r["stop_reason"] for r in records)),
    }
    return {**summary, **(method_entry(method).summary(records) if records else {})}


def table_row(record: dict) -> dict:
    """What a W&B table shows per prompt (long fields left to the records file)."""
    keys = ("id", "turn", "prompt", "response", "response_tokens", "stop_reason", "keep_count", "switched",
            "handovers")
    row = {k: record[k] for k in keys if k in record}
    row["seconds"] = record["seconds"]["total"]
    return row


def generate_turns(method, method_name: str, questions: list[Prompt], done: dict, records: RunRecords, tracker,
                   label: str) -> int:
    """Decode every missing turn of `questions`, turn by turn (a follow-up needs the
    answer before it); returns how many records were written."""
    from tqdm import tqdm

    remaining = sum(i not in done for q in questions for i in q.turn_ids)
    written, current = 0, list(questions)
    with tqdm(total=remaining, desc=label, unit="prompt") as progress:
        while current:
            pending = [p for p in current if p.id not in done]
            for p in pending:
                method.check_fits(p.id, p.messages)
            for prompt, generated in method.generate_many(pending):
                record = {"id": prompt.id, "question_id": prompt.question_id, "turn": prompt.turn,
                          "method": method_name, "prompt": prompt.instruction, "messages": prompt.messages,
                          **generated}
                records.append(record)
                done[prompt.id] = record
                written += 1
                progress.update()
                tracker.log({"response_tokens": record["response_tokens"],
                             "seconds": record["seconds"]["total"], "written": written})
            current = [p.next_turn(done[p.id]["response"]) for p in current if p.followups]
    return written


def write_alpaca_eval(path: Path, records: list[dict], prompts: list[Prompt], generator: str) -> None:
    """alpaca_eval's model-outputs format, one entry per record (records in `turn_ids` order
    of `prompts`); multi-turn benchmarks add the turn."""
    questions = [p for p in prompts for _ in p.turn_ids]
    rows = [{"instruction": r["prompt"], "output": r["response"], "generator": generator,
             **({"dataset": p.meta["dataset"]} if p.meta.get("dataset") else {}),
             **({"turn": r["turn"]} if r["turn"] > 1 or p.followups else {})}
            for r, p in zip(records, questions)]
    write_atomic(path, json.dumps(rows, indent=1, ensure_ascii=False))


def _detail(record: dict) -> str:
    if "keep_count" in record:
        return f"k {record['keep_count']}/{record['base_draft_tokens']}" + (" switched" if record["switched"] else "")
    if "handovers" in record:
        return f"{record['handovers']} pilot words"
    return ""


def print_table(summary: dict) -> None:
    """Per-prompt lengths, stops and timings (and the switch, for WSD), for a person
    reading the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['generator']} on {summary['benchmark']}")
    for column in ("id", "tokens", "stop", "seconds", "detail"):
        table.add_column(column, justify="right" if column in ("tokens", "seconds") else "left", no_wrap=True)
    by_id = {r["id"]: r for r in RunRecords(Path(summary["run_dir"])).done().values()}
    for r in (by_id[i] for i in summary["ids"]):
        table.add_row(r["id"], str(r["response_tokens"]), r["stop_reason"], f"{r['seconds']['total']:.1f}",
                      _detail(r))
    console = Console()
    console.width = max(console.width, 100)  # pipes and CI logs report 80 columns
    console.print(table)
