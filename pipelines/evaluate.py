"""Evaluate stage: one judge over one finished generation run -> per-item scores (JSONL,
resumable per item) and a summary with n and a bootstrap 95% interval per metric.

    python -m pipelines.evaluate benchmark=harmful method=wsd judge=harmlessness benchmark.limit=8
    python -m pipelines.evaluate -m benchmark=alpaca_eval method=base,wsd judge=reference_similarity
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from eval.judges import build_judge, check_items_fit, check_judge_config, reference_for
from eval.results import write_tables
from eval.stats import bootstrap, bootstrap_ratio, interval_text, print_estimates
from pipelines import generate, multirun_flag_first
from wsd.prompt_sets import load_benchmark
from wsd.store import RecordFile, RunRecords, config_key, write_atomic
from wsd.tracking import tracked, validate_logger

log = logging.getLogger("wsd.evaluate")

RECORD_FIELDS = ("id", "turn", "prompt", "messages", "response")


# Judge settings that change where or how fast, not what, it scores: left out of the folder key.
_NOT_RESULTS = ("model_cache_dir", "nltk_data_dir", "batch_size", "concurrency", "timeout_s", "max_retries",
                "api_key_env", "start_timeout_s")


def _result_keys(value):
    if isinstance(value, dict):
        return {k: _result_keys(v) for k, v in value.items() if k not in _NOT_RESULTS}
    return value


def judge_dir(cfg: DictConfig, generation: Path) -> Path:
    judge = OmegaConf.to_container(cfg.judge, resolve=True)
    return (Path(cfg.output_root) / "evaluate" / cfg.benchmark.name / generation.name /
            f"{judge['name']}__{config_key(_result_keys(judge))}")


def item_key(item: dict) -> str:
    """What a score depends on: a regenerated response (or a changed reference) is rescored."""
    return config_key([item["response"], item.get("reference")])


def generation_items(cfg: DictConfig) -> tuple[Path, list[dict]]:
    """The finished generation run this config names, as judge items in benchmark order:
    each record with its benchmark `meta` and `reference` for that turn."""
    folder = generate.run_dir(cfg)
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(
            f"no finished generation run at {folder}; run `python -m pipelines.generate` with the same "
            "overrides first")
    prompts = load_benchmark(OmegaConf.to_container(cfg.benchmark, resolve=True))
    meta = {p.question_id: p.meta for p in prompts}
    wanted = [i for p in prompts for i in p.turn_ids]
    records = RunRecords(folder).done()
    missing = [i for i in wanted if i not in records]
    if missing:
        raise ValueError(f"the generation run at {folder} has no record for {len(missing)} prompts "
                         f"(first: {missing[0]!r}); finish it with `python -m pipelines.generate` first")
    items = []
    for prompt_id in wanted:
        record = records[prompt_id]
        absent = [f for f in RECORD_FIELDS if f not in record]
        if absent:
            raise ValueError(f"{folder / 'records.jsonl'}: record {prompt_id!r} lacks {', '.join(absent)}")
        question = record.get("question_id", prompt_id)
        items.append({**{f: record[f] for f in RECORD_FIELDS}, "question_id": question,
                      "meta": meta.get(question, {}),
                      "reference": reference_for(meta.get(question, {}), record["turn"])})
    return folder, items


def numbers(scores: dict) -> dict:
    """A score row's metrics: its numbers (a judge also keeps its raw judgments, verdict labels)."""
    return {k: v for k, v in scores.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def summarize(scores: list[dict], resamples: int, seed: int, ratios: dict | None = None) -> dict:
    """Per metric: mean, bootstrap 95% interval and n over the items the judge could score;
    a judge's `ratios` are reported as ratios of sums (micro averages)."""
    metrics = {}
    scored = [numbers(s["scores"]) for s in scores if s["scores"]]
    counts = {key for pair in (ratios or {}).values() for key in pair}  # per-item counts: ratios' parts only
    for key in dict.fromkeys(k for s in scored for k in s if k not in counts):
        values = [s[key] for s in scored if s.get(key) is not None]
        if values:  # (none: e.g. no verdict had a rating; its `parsed` share says so)
            metrics[key] = bootstrap(values, resamples=resamples, seed=seed).as_dict()
    for key, (numerator, denominator) in (ratios or {}).items():
        if any(s[denominator] for s in scored):  # (none: e.g. no Arena-Hard verdict was parseable)
            metrics[key] = bootstrap_ratio([s[numerator] for s in scored], [s[denominator] for s in scored],
                                           resamples=resamples, seed=seed).as_dict()
    return metrics


def run(cfg: DictConfig) -> dict:
    """Check the inputs (judge name, generation records) before loading the judge's model,
    then score only the items not yet scored."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    name = resolved["judge"].get("name")
    check_judge_config(resolved["judge"], resolved["benchmark"])
    validate_logger(resolved["logger"])
    generation, items = generation_items(cfg)
    check_items_fit(name, items, cfg.benchmark.name)
    out = judge_dir(cfg, generation)
    out.mkdir(parents=True, exist_ok=True)
    score_file = RecordFile(out / "scores.jsonl")
    keys = {item["id"]: item_key(item) for item in items}
    done = {s["id"]: s for s in score_file.read() if s.get("item_key") == keys.get(s["id"])}
    todo = [item for item in items if item["id"] not in done]
    log.info("judge %s on %s: %d items, %d already scored, in %s", name, generation.name, len(items),
             len(items) - len(todo), out)
    with tracked(resolved["logger"], stage="evaluate", group=cfg.name, config=resolved, folder=out,
                 name=f"{cfg.benchmark.name}/{generation.name}/{name}") as tracker:
        judge = build_judge(resolved["judge"], folder=out)  # loads its model: fails here with the model's name
        if hasattr(judge, "check_items"):
            judge.check_items(items)
        if todo:
            from tqdm import tqdm

            session = judge.session() if hasattr(judge, "session") else contextlib.nullcontext()
            with session, tqdm(total=len(todo), desc=f"{name} {generation.name}", unit="item") as progress:
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
        set_metrics = (judge.set_metrics([s["scores"] for s in scores], items) if hasattr(judge, "set_metrics")
                       else {})
        summary = {"judge": name, "proxy": judge.proxy, "benchmark": cfg.benchmark.name,
                   "method": cfg.method.name, "run": generate.run_description(cfg),
                   "generation": str(generation), "items": len(items),
                   "metrics": {**summarize(scores, cfg.bootstrap_resamples, cfg.seed, getattr(judge, "ratios", None)),
                               **(judge.estimates([s["scores"] for s in scores], items)
                                  if hasattr(judge, "estimates") else {})},
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


def compose(overrides: list[str]) -> DictConfig:
    """This stage's config as `python -m pipelines.evaluate <overrides>` builds it."""
    return generate.compose(overrides, config_name="evaluate")


def print_table(summary: dict) -> None:
    from rich.console import Console

    label = " (offline proxy)" if summary["proxy"] else ""
    print_estimates(f"{summary['judge']}{label}: {summary['method']} on {summary['benchmark']}", summary["metrics"])
    for name, values in summary["set_metrics"].items():
        Console().print(f"{name}{label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in values.items()))


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print_table(run(cfg))


if __name__ == "__main__":
    multirun_flag_first()
    main()
