"""The evaluate stage's parts: the generate run a config names, its records as judge items,
which scores a changed response invalidates, and the per-metric estimates of a run's scores."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eval.judges import reference_for
from eval.stats import bootstrap, bootstrap_ratio, print_estimates
from wsd.core.store import RunRecords, config_key
from wsd.data.prompt_sets import load_benchmark
from wsd.runs import identity as identities

RECORD_FIELDS = ("id", "turn", "prompt", "messages", "response")


def item_key(item: dict) -> str:
    """What a score depends on: a regenerated response (or a changed reference) is rescored."""
    return config_key([item["response"], item.get("reference")])


def generation_source(cfg: DictConfig) -> tuple[Path, DictConfig]:
    """The finished generate run an evaluate config names, and that run's own config: the
    folder `input=` gives, or the one the config's generate settings derive
    (`wsd.runs.identity.generation`)."""
    if cfg.get("input"):
        folder = Path(cfg.input).expanduser()
        identities.finished(folder, "generate")
        return folder, OmegaConf.load(folder / "config.yaml")
    folder = identities.generation(cfg).folder
    if not (folder / "summary.json").exists():
        raise FileNotFoundError(
            f"no finished generation run at {folder}; run `python -m pipelines.generate` with the same "
            "overrides first, or name a finished run with input=outputs/generate/<benchmark>/<run>")
    return folder, cfg


def generation_items(folder: Path, benchmark: dict) -> list[dict]:
    """A finished generate run's records as judge items in benchmark order: each record with
    its benchmark `meta` and `reference` for that turn."""
    prompts = load_benchmark(benchmark)
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
    return items


def numbers(scores: dict) -> dict:
    """A score row's metrics: its numbers (a judge also keeps its raw judgments, verdict labels)."""
    return {k: v for k, v in scores.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def summarize_scores(scores: list[dict], resamples: int, seed: int, ratios: dict | None = None) -> dict:
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


def print_table(summary: dict) -> None:
    from rich.console import Console

    label = " (offline proxy)" if summary["proxy"] else ""
    print_estimates(f"{summary['judge']}{label}: {summary['method']} on {summary['benchmark']}", summary["metrics"])
    for name, values in summary["set_metrics"].items():
        Console().print(f"{name}{label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in values.items()))
