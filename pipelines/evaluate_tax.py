"""Alignment-tax stage: lm-eval's own runner (`simple_evaluate`, `--log_samples` output) over
GSM8K, HumanEval and IFEval with a generate-stage method as the lm-eval model `wsd`.

    python -m pipelines.evaluate_tax -m method=base,pilot,wsd tax.limit=10
    python -m pipelines.evaluate_tax method=wsd tax.tasks=[wsd_gsm8k] tax.gsm8k_path=gsm8k_test.jsonl
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from eval.results import write_tables
from eval.stats import bootstrap, bootstrap_ratio, print_estimates
from pipelines import generate, multirun_flag_first
from wsd.methods import method_entry
from wsd.models import ModelSpec, check_available
from wsd.store import RecordFile, config_key, write_atomic
from wsd.tracking import tracked, validate_logger

log = logging.getLogger("wsd.evaluate_tax")

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval" / "tasks"

# Settings that change how fast, not what, the tax measures: left out of the folder key.
_NOT_RESULTS = ("batch_size", "chunk_tokens")


def tax_dir(cfg: DictConfig) -> Path:
    """Folder keyed by the method's identity (as in the generate stage) and the `tax` block."""
    name, payload = generate.method_identity(cfg)
    payload["generation"] = {k: v for k, v in payload["generation"].items() if k not in _NOT_RESULTS}
    payload["tax"] = OmegaConf.to_container(cfg.tax, resolve=True)
    return Path(cfg.output_root) / "evaluate_tax" / f"{name}__{config_key(payload)}"


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
    tasks = tax["tasks"]
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tax.tasks must be a non-empty list of task names, got {tasks!r}")
    limit = tax["limit"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"tax.limit must be a positive integer or null, got {limit!r}")
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


def run(cfg: DictConfig) -> dict:
    """Check the config, tasks and their data, and the models before loading anything big;
    a finished run is only reported again (`force=true` recomputes; answers already cached
    per request are reused, so a killed run resumes where it stopped)."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    from eval.judges import install_punkt_tab
    from eval.lm_eval_model import MethodLM

    resolved = OmegaConf.to_container(cfg, resolve=True)
    entry = method_entry(resolved["method"]["name"])
    if entry.reward or "corrector" in entry.roles:
        raise ValueError(f"the alignment-tax stage does not run method {resolved['method']['name']!r} (its folder "
                         "is not keyed by a reward model or corrector); it runs base, urial, pilot, wsd and nudging")
    entry.check(resolved)
    validate_logger(resolved["logger"])
    tax = resolved["tax"]
    manager, tasks = load_tasks(tax)
    specs = {role: ModelSpec.from_config(cfg[role]) for role in entry.roles_for(cfg)}
    for spec in specs.values():
        check_available(spec)

    out = tax_dir(cfg)
    summary_path = out / "summary.json"
    if summary_path.exists() and not cfg.force:
        log.info("already finished: %s (force=true recomputes)", summary_path)
        return json.loads(summary_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if any("ifeval" in t for t in tasks):
        install_punkt_tab(cfg.nltk_data_dir)
    answers = RecordFile(out / "generations.jsonl")
    method_name = resolved["method"]["name"]
    label = "__".join([method_name, *(cfg[role].name for role in entry.roles_for(cfg))])
    log.info("%s on %s (limit %s) in %s", label, ", ".join(tasks), tax["limit"], out)

    with tracked(resolved["logger"], stage="evaluate_tax", group=cfg.name, name=f"tax/{label}", config=resolved,
                 folder=out) as tracker:
        from transformers import set_seed

        set_seed(cfg.seed)
        lm = MethodLM(resolved, generate.pooled_models(specs, resolved), on_record=answers.append)
        started = time.perf_counter()
        results = simple_evaluate(
            model=lm, tasks=list(tax["tasks"]), task_manager=manager, limit=tax["limit"], log_samples=True,
            use_cache=str(out / "request_cache"), gen_kwargs={"max_gen_toks": tax["max_gen_toks"]} if tax["max_gen_toks"] else None,
            confirm_run_unsafe_code=True, bootstrap_iters=cfg.bootstrap_resamples,
            random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed)
        wall = time.perf_counter() - started
        samples = results.pop("samples")
        lm_eval_out = EvaluationTracker(output_path=str(out / "lm_eval" / "results.json"))
        lm_eval_out.save_results_aggregated(results=results, samples=samples)
        for task, rows in samples.items():
            lm_eval_out.save_results_samples(task_name=task, samples=rows)
        metrics = {task: list(results["higher_is_better"].get(task, {})) for task in samples}
        generated = answers.read()
        summary = {
            "method": method_name, "run": generate.run_description(cfg),
            "tasks": list(tax["tasks"]), "limit": tax["limit"],
            "n": {task: len({r["doc_id"] for r in rows}) for task, rows in samples.items()},
            "metrics": sample_metrics(samples, metrics, cfg.bootstrap_resamples, cfg.seed),
            "lm_eval_results": results["results"],
            "loglikelihood_by": lm.loglikelihood_model.name,
            "decoding": generate.summarize(generated, method_name) if generated else None,
            "wall_seconds": wall, "run_dir": str(out),
        }
        write_atomic(summary_path, json.dumps(summary, indent=1, default=str))
        tracker.summary({f"{k}/{stat}": v for k, est in summary["metrics"].items() for stat, v in est.items()})
        log.info("comparison table of experiment %r: %s", cfg.name, write_tables(cfg.output_root, cfg.name))
        tracker.table("samples", [{"task": t, "doc_id": r["doc_id"], "filter": r["filter"],
                                   "response": str(r["filtered_resps"][0] if r["filtered_resps"] else ""),
                                   **{m: str(r[m]) for m in metrics[t] if m in r}}
                                  for t, rows in samples.items() for r in rows])
    return summary


def compose(overrides: list[str]) -> DictConfig:
    """This stage's config as `python -m pipelines.evaluate_tax <overrides>` builds it."""
    return generate.compose(overrides, config_name="evaluate_tax")


def print_table(summary: dict) -> None:
    print_estimates(f"alignment tax: {summary['method']} ({', '.join(summary['run']['models'].values())})",
                    summary["metrics"], first_column="task / metric")


@hydra.main(config_path="../conf", config_name="evaluate_tax", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print_table(run(cfg))


if __name__ == "__main__":
    multirun_flag_first()
    main()
