"""Generation stage: WSD over a benchmark, one JSON record per prompt, resumable.

    python -m pipelines.generate benchmark=alpaca_eval benchmark.limit=5
    python -m pipelines.generate benchmark=jsonl benchmark.path=my_prompts.jsonl
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from wsd.benchmarks import load_benchmark
from wsd.models import ModelSpec, check_available, load_model
from wsd.decoding import WSDSettings
from wsd.draft_cache import DraftCache
from wsd.fast import FastOptions, FastWSD
from wsd.reference import ReferenceWSD
from wsd.store import RecordFile, config_key, slug, write_atomic

log = logging.getLogger("wsd.generate")

ENGINES = ("fast", "reference")
_FAST_KEYS = ("batch_size", "chunk_tokens", "early_stop")


def _settings(cfg: DictConfig) -> tuple[str, WSDSettings, FastOptions]:
    """Validate the `wsd` block: the engine, the switch rule and budgets, the fast options."""
    wsd_cfg = OmegaConf.to_container(cfg.wsd, resolve=True)
    engine = wsd_cfg.pop("engine")
    if engine not in ENGINES:
        raise ValueError(f"unknown wsd.engine {engine!r}; accepted: {', '.join(ENGINES)}")
    options = FastOptions(**{k: wsd_cfg.pop(k) for k in _FAST_KEYS if k in wsd_cfg})
    return engine, WSDSettings(**wsd_cfg), options


def make_engine(cfg: DictConfig, choice: tuple[str, WSDSettings, FastOptions], pilot, base):
    """The configured engine (`_settings(cfg)`) over loaded models; the fast one shares drafts
    through a cache."""
    engine, settings, options = choice
    if engine == "reference":
        return ReferenceWSD(pilot, base, settings)
    draft_cache = None
    if cfg.draft_cache_dir:
        identity = {"pilot": OmegaConf.to_container(cfg.pilot, resolve=True),
                    "base": OmegaConf.to_container(cfg.base, resolve=True),
                    "draft_max_tokens": settings.draft_max_tokens, "fixed_length": settings.fixed_length,
                    "seed": cfg.seed}
        draft_cache = DraftCache(cfg.draft_cache_dir, identity)
    return FastWSD(pilot, base, settings, options, draft_cache)


def run_dir(cfg: DictConfig) -> Path:
    """Folder keyed by everything that determines the records; `limit` is left out so a
    larger run over the same benchmark resumes a smaller one."""
    benchmark = OmegaConf.to_container(cfg.benchmark, resolve=True)
    benchmark.pop("limit", None)
    key = config_key({
        "pilot": OmegaConf.to_container(cfg.pilot, resolve=True),
        "base": OmegaConf.to_container(cfg.base, resolve=True),
        "wsd": OmegaConf.to_container(cfg.wsd, resolve=True),
        "benchmark": benchmark,
        "seed": cfg.seed,
    })
    name = f"wsd__{slug(cfg.pilot.name)}__{slug(cfg.base.name)}__{key}"
    return Path(cfg.output_root) / "generate" / cfg.benchmark.name / name


def summarize(records: list[dict]) -> dict:
    def mean(key):
        return statistics.fmean(r[key] for r in records) if records else 0.0

    seconds = {p: sum(r["seconds"][p] for r in records) for p in ("draft", "check", "target", "total")}
    return {
        "prompts": len(records),
        "mean_keep_count": mean("keep_count"),
        "switched_share": mean("switched"),
        "mean_draft_tokens": mean("draft_tokens"),
        "mean_continuation_tokens": mean("continuation_tokens"),
        "mean_response_chars": statistics.fmean(len(r["response"]) for r in records) if records else 0.0,
        "seconds": seconds,
    }


def run(cfg: DictConfig) -> dict:
    """Validate everything cheap first, then decode only the prompts not yet recorded."""
    choice = _settings(cfg)
    pilot_spec, base_spec = ModelSpec.from_config(cfg.pilot), ModelSpec.from_config(cfg.base)
    prompts = load_benchmark(OmegaConf.to_container(cfg.benchmark, resolve=True))
    check_available(pilot_spec)
    check_available(base_spec)

    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record_file = RecordFile(out / "records.jsonl")
    done = {r["id"]: r for r in record_file.read()}
    todo = [p for p in prompts if p.id not in done]
    log.info("%d prompts, %d already recorded in %s", len(prompts), len(prompts) - len(todo), out)

    forward_passes = None
    if todo:
        from tqdm import tqdm
        from transformers import set_seed

        set_seed(cfg.seed)
        engine = make_engine(cfg, choice, load_model(pilot_spec, cfg.model_cache_dir),
                             load_model(base_spec, cfg.model_cache_dir))
        for prompt in todo:
            engine.check_fits(prompt.id, prompt.messages)
        with tqdm(total=len(todo), desc=f"wsd {cfg.benchmark.name}", unit="prompt") as progress:
            for prompt, generated in engine.generate_many(todo):
                record = {"id": prompt.id, "prompt": prompt.instruction, "messages": prompt.messages,
                          **generated}
                record_file.append(record)
                done[prompt.id] = record
                progress.update()
        forward_passes = getattr(engine, "counter", None)

    records = [done[p.id] for p in prompts]
    generator = f"wsd__{cfg.pilot.name}__{cfg.base.name}"
    alpaca = [{"instruction": r["prompt"], "output": r["response"], "generator": generator,
               **({"dataset": p.meta["dataset"]} if p.meta.get("dataset") else {})}
              for r, p in zip(records, prompts)]
    write_atomic(out / "alpaca_eval.json", json.dumps(alpaca, indent=1, ensure_ascii=False))
    summary = {**summarize(records), "forward_passes": forward_passes, "ids": [p.id for p in prompts],
               "run_dir": str(out), "records": str(record_file.path),
               "alpaca_eval": str(out / "alpaca_eval.json")}
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    log.info("records: %s", record_file.path)
    log.info("alpaca_eval outputs: %s", out / "alpaca_eval.json")
    log.info(
        "summary: %d prompts, mean k %.1f, switched %.0f%%, mean response %.0f chars, %.1f s total",
        summary["prompts"], summary["mean_keep_count"], 100 * summary["switched_share"],
        summary["mean_response_chars"], summary["seconds"]["total"],
    )
    return summary


CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]) -> DictConfig:
    """This stage's config as `python -m pipelines.generate <overrides>` builds it (for tests
    and benchmarks, which call `run` or the library directly)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("generate", overrides=overrides)


def print_table(summary: dict) -> None:
    """Per-prompt switch positions and timings, for a person reading the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="WSD: switch position k of the draft's base tokens, per prompt")
    for column in ("id", "draft tok", "k / base tok", "switched", "cont tok", "stop", "seconds"):
        table.add_column(column, justify="left" if column in ("id", "stop") else "right", no_wrap=True)
    by_id = {r["id"]: r for r in RecordFile(Path(summary["records"])).read()}
    for r in (by_id[i] for i in summary["ids"]):
        table.add_row(r["id"], str(r["draft_tokens"]), f"{r['keep_count']} / {r['base_draft_tokens']}",
                      "yes" if r["switched"] else "no", str(r["continuation_tokens"]), r["stop_reason"],
                      f"{r['seconds']['total']:.1f}")
    console = Console()
    console.width = max(console.width, 100)  # pipes and CI logs report 80 columns
    console.print(table)


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print_table(run(cfg))


if __name__ == "__main__":
    main()
