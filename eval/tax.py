"""The alignment-tax stage's parts: lm-eval's task manager over our tasks (`eval/tasks/`,
their data in `eval/tax_tasks.py`), the configured tasks loaded before any model, and
per-sample estimates from lm-eval's logged samples."""

from __future__ import annotations

from pathlib import Path

from eval.stats import bootstrap, bootstrap_ratio, print_estimates
from wsd.core.schemas import TaxBlock

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def task_metadata(tax: dict) -> dict:
    """What the task loaders in eval/tax_tasks.py receive (lm-eval passes it to every task)."""
    return {"gsm8k_path": tax["gsm8k_path"], "gsm8k_fewshot_path": tax["gsm8k_fewshot_path"],
            "humaneval_timeout": tax["humaneval_timeout"]}


def task_manager(tax: dict):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=bool(tax["include_defaults"]),
                       metadata=task_metadata(tax))


def load_tasks(tax: dict):
    """The configured tasks with their data, loaded now: an unknown task, a missing GSM8K file
    or an offline Hub read fails here, before any model loads."""
    TaxBlock(**tax).validate()
    tasks = tax["tasks"]
    manager = task_manager(tax)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        known = ", ".join(sorted(t for t in manager.all_tasks if t.startswith("wsd_")))
        raise ValueError(f"unknown tax task(s) {', '.join(map(repr, unknown))}; ours: {known}"
                         + ("" if tax["include_defaults"] else " (tax.include_defaults=true adds lm-eval's own)"))
    return manager, manager.load(list(tasks))["tasks"]


def sample_metrics(samples: dict[str, list[dict]], metrics: dict[str, list[str]], resamples: int,
                   seed: int) -> dict:
    """Per task, filter and metric: the mean with a bootstrap 95% interval and n, from lm-eval's
    per-sample values (list values, such as IFEval's per-instruction checks, as a ratio of
    sums over all instructions)."""
    out = {}
    for task, rows in samples.items():
        for filter_name in dict.fromkeys(r["filter"] for r in rows):
            for metric in metrics[task]:
                values = [r[metric] for r in rows if r["filter"] == filter_name and metric in r]
                if not values:
                    continue
                key = f"{task}/{metric}" + ("" if filter_name in ("none", "extract-code") else f"/{filter_name}")
                if isinstance(values[0], list):
                    est = bootstrap_ratio([sum(v) for v in values], [len(v) for v in values], resamples, seed)
                else:
                    est = bootstrap(values, resamples, seed)
                out[key] = est.as_dict()
    return out


def print_table(summary: dict) -> None:
    print_estimates(f"alignment tax: {summary['method']} ({', '.join(summary['run']['models'].values())})",
                    summary["metrics"], first_column="task / metric")
