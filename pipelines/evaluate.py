"""Evaluate stage: one judge over one finished generation run -> per-item scores (JSONL,
resumable per item) and a summary with n and a bootstrap 95% interval per metric, in
`wsd.runs.identity.evaluation`'s folder (`outputs/evaluate/<benchmark>/<generate run>/<judge>__<key>`).
The run to score is `input=<its folder>`, or the one the same generate overrides name.

    python -m pipelines.evaluate input=outputs/generate/harmful/wsd__... judge=harmlessness
    python -m pipelines.evaluate benchmark=harmful method=wsd judge=harmlessness benchmark.limit=8
    python -m pipelines.evaluate -m benchmark=alpaca_eval method=base,wsd judge=reference_similarity
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from eval.judges import build_judge, check_items_fit, check_judge_config
from eval.results import write_tables
from eval.scores import generation_items, generation_source, item_key, numbers, print_table, summarize_scores
from eval.stats import interval_text
from pipelines import multirun_flag_first
from wsd.backends.engines import ModelPool
from wsd.core.store import RecordFile, write_atomic
from wsd.runs import identity as identities
from wsd.runs.tracking import tracked, validate_logger

log = logging.getLogger("wsd.evaluate")

POOL = ModelPool()  # a local judge's model, kept across the jobs of a multirun


def run(cfg: DictConfig, pool: ModelPool | None = None) -> dict:
    """Check the inputs (judge name, generation records) before loading the judge's model,
    then score only the items not yet scored (a local judge's model from `pool`)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    name = resolved["judge"].get("name")
    generation, generated_by = generation_source(cfg)
    benchmark = OmegaConf.to_container(generated_by.benchmark, resolve=True)
    check_judge_config(resolved["judge"], benchmark)
    validate_logger(resolved["logger"])
    items = generation_items(generation, benchmark)
    check_items_fit(name, items, benchmark["name"])
    identity = identities.evaluation(cfg, generation, benchmark["name"])
    out = identity.claim()
    score_file = RecordFile(out / "scores.jsonl")
    keys = {item["id"]: item_key(item) for item in items}
    done = {s["id"]: s for s in score_file.read() if s.get("item_key") == keys.get(s["id"])}
    todo = [item for item in items if item["id"] not in done]
    log.info("judge %s on %s: %d items, %d already scored, in %s", name, generation.name, len(items),
             len(items) - len(todo), out)
    with tracked(resolved["logger"], stage="evaluate", group=cfg.name, config=resolved, folder=out,
                 name=f"{benchmark['name']}/{generation.name}/{name}") as tracker:
        judge = build_judge(resolved["judge"], folder=out, pool=POOL if pool is None else pool)  # loads its model: fails here with the model's name
        judge.check_items(items)
        if todo:
            from tqdm import tqdm

            with judge.session(), tqdm(total=len(todo), desc=f"{name} {generation.name}", unit="item") as progress:
                for start in range(0, len(todo), cfg.score_batch_size):
                    batch = todo[start : start + cfg.score_batch_size]
                    for item, scores in zip(batch, judge.score(batch)):
                        row = {"id": item["id"], "question_id": item["question_id"], "turn": item["turn"],
                               "judge": name, "item_key": keys[item["id"]], "scores": scores}
                        score_file.append(row)
                        done[item["id"]] = row
                    progress.update(len(batch))
        scores = [done[item["id"]] for item in items]
        if not any(s["scores"] for s in scores):
            raise ValueError(f"judge {name!r} scored none of the {len(items)} items of {generation}; its scores so "
                             f"far are kept in {score_file.path}")
        set_metrics = judge.set_metrics([s["scores"] for s in scores], items)
        summary = {"judge": name, "proxy": judge.proxy, "benchmark": benchmark["name"],
                   "method": generated_by.method.name, "run": identities.run_description(generated_by),
                   "identity": identity.record(), "generation": str(generation), "items": len(items),
                   "metrics": {**summarize_scores(scores, cfg.bootstrap_resamples, cfg.seed, judge.ratios),
                               **judge.estimates([s["scores"] for s in scores], items)},
                   "set_metrics": set_metrics,
                   "scores": str(score_file.path)}
        write_atomic(out / "summary.json", json.dumps(summary, indent=1))
        tracker.table("scores", [{"id": s["id"], **numbers(s["scores"] or {})} for s in scores])
        tracker.summary({f"{k}/{stat}": v for k, est in {**summary["metrics"], **set_metrics}.items()
                         for stat, v in est.items()})
    for key, est in summary["metrics"].items():
        log.info("%s%s: %.3f %s (n=%d)", key, " (proxy)" if judge.proxy else "", est["mean"], interval_text(est),
                 est["n"])
    log.info("comparison table of experiment %r: %s", cfg.name, write_tables(cfg.output_root, cfg.name))
    return summary


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print_table(run(cfg))


if __name__ == "__main__":
    multirun_flag_first()
    main()
