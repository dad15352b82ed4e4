"""Alignment-tax stage: lm-eval's own runner (`simple_evaluate`, `--log_samples` output) over
GSM8K, HumanEval and IFEval with a generate-stage method as the lm-eval model `wsd`, in
`wsd.runs.identity.tax`'s folder (`outputs/evaluate_tax/<method>__<models>__<key>`).

    python -m pipelines.evaluate_tax -m method=base,pilot,wsd tax.limit=10
    python -m pipelines.evaluate_tax method=wsd tax.tasks=[wsd_gsm8k] tax.gsm8k_path=gsm8k_test.jsonl
"""

from __future__ import annotations

import json
import logging
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from eval.results import write_tables
from eval.tax import load_tasks, print_table, sample_metrics
from pipelines import multirun_flag_first
from wsd.api import Generator
from wsd.backends.engines import ModelPool
from wsd.core.store import RecordFile, write_atomic
from wsd.methods import method_entry
from wsd.runs import identity as identities
from wsd.runs.generate_stage import summarize
from wsd.runs.tracking import tracked, validate_logger

log = logging.getLogger("wsd.evaluate_tax")

POOL = ModelPool()  # this stage's models, kept across the jobs of a multirun


def run(cfg: DictConfig, pool: ModelPool | None = None) -> dict:
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
    runner = Generator(resolved, POOL if pool is None else pool)  # checks the settings and the models
    validate_logger(resolved["logger"])
    tax = resolved["tax"]
    manager, tasks = load_tasks(tax)

    identity = identities.tax(cfg)
    out = identity.claim(identities.tax)
    summary_path = out / "summary.json"
    if summary_path.exists() and not cfg.force:
        log.info("already finished: %s (force=true recomputes)", summary_path)
        return json.loads(summary_path.read_text())
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
        lm = MethodLM(resolved, runner.engines(), on_record=answers.append)
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
            "method": method_name, "run": identities.run_description(cfg), "identity": identity.record(),
            "tasks": list(tax["tasks"]), "limit": tax["limit"],
            "n": {task: len({r["doc_id"] for r in rows}) for task, rows in samples.items()},
            "metrics": sample_metrics(samples, metrics, cfg.bootstrap_resamples, cfg.seed),
            "lm_eval_results": results["results"],
            "loglikelihood_by": lm.loglikelihood_model.name,
            "decoding": summarize(generated, method_name) if generated else None,
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


@hydra.main(config_path="../conf", config_name="evaluate_tax", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print_table(run(cfg))


if __name__ == "__main__":
    multirun_flag_first()
    main()
