"""Generation stage: one method over one benchmark, one JSON record per prompt (and turn),
resumable, logged, and shardable across processes.

    python -m pipelines.generate benchmark=alpaca_eval method=wsd benchmark.limit=5
    python -m pipelines.generate -m benchmark=alpaca_eval,mt_bench method=base,wsd benchmark.limit=8
    accelerate launch --num_processes 2 -m pipelines.generate ...   (add --multi_gpu on CPU)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import multirun_flag_first
from wsd.prompt_sets import Prompt, load_benchmark
from wsd.methods import effective_backend, method_entry
from wsd.engines import Engine, HFEngine, check_backend, pooled_engine
from wsd.models import ModelSpec, check_available, resolve_device
from wsd.reward import RewardSettings, pooled_reward_model
from wsd.store import RunRecords, config_key, slug, write_atomic
from wsd.tracking import tracked, validate_logger

log = logging.getLogger("wsd.generate")


def method_identity(cfg: DictConfig) -> tuple[str, dict]:
    """A readable name (the method and its models) and everything else that determines a
    method's outputs on a given prompt: its models, the method block, the shared decoding
    options, the `wsd` block only for WSD, and the seed. Baselines are thus shared by every
    point of a WSD sweep."""
    entry = method_entry(cfg.method.name)
    backend = effective_backend(OmegaConf.to_container(cfg, resolve=True))
    roles = entry.roles_for(cfg)
    payload = {role: OmegaConf.to_container(cfg[role], resolve=True) for role in roles}
    if entry.reward:
        payload["reward_model"] = OmegaConf.to_container(cfg.reward_model, resolve=True)
    for model in payload.values():
        if model.get("path") and Path(model["path"]).expanduser().is_symlink():
            # `pilot=trained` links to the latest training: key by what it points at
            model["resolved_path"] = str(Path(model["path"]).expanduser().resolve())
        if backend["name"] == "hf":
            model.pop("vllm", None)  # engine settings of a backend not in use change nothing
    if backend["name"] != "hf":  # HF, the default, keeps the keys its runs always had
        payload["backend"] = backend
    payload.update(method=OmegaConf.to_container(cfg.method, resolve=True), seed=cfg.seed,
                   generation=OmegaConf.to_container(cfg.generation, resolve=True))
    if entry.uses_wsd_block:
        payload["wsd"] = OmegaConf.to_container(cfg.wsd, resolve=True)
    names = [cfg[role].name for role in roles] + ([cfg.reward_model.name] if entry.reward else [])
    return "__".join([cfg.method.name, *map(slug, names)]), payload


# The settings a table row names a reward-guided run by (what a grid varies)
_LABEL_KEYS = {"args": ("k", "weight"), "cards": ("reward_target",), "best_of_n": ("source", "n")}


def run_description(cfg: DictConfig) -> dict:
    """What tables name a run by: the experiment, the method, its models, WSD's settings, a
    reward-guided method's main settings and whether its reward model is a weak proxy."""
    entry = method_entry(cfg.method.name)
    wsd = {k: cfg.wsd[k] for k in ("window", "threshold", "draft_max_tokens")} if entry.uses_wsd_block else None
    description = {"experiment": cfg.name, "method": cfg.method.name,
                   "models": {role: cfg[role].name for role in entry.roles_for(cfg)}, "wsd": wsd}
    if entry.reward:
        description["models"]["reward_model"] = cfg.reward_model.name
        description["reward_proxy"] = bool(cfg.reward_model.proxy)
    if cfg.method.name in _LABEL_KEYS:
        description["settings"] = {k: cfg.method[k] for k in _LABEL_KEYS[cfg.method.name]}
    return description


def run_dir(cfg: DictConfig) -> Path:
    """Folder keyed by the method's identity and the benchmark without `limit` (so a larger
    run resumes a smaller one)."""
    name, payload = method_identity(cfg)
    benchmark = OmegaConf.to_container(cfg.benchmark, resolve=True)
    benchmark.pop("limit", None)
    return Path(cfg.output_root) / "generate" / cfg.benchmark.name / f"{name}__{config_key({**payload, 'benchmark': benchmark})}"


def pooled_models(needed: dict[str, ModelSpec], cfg: dict) -> dict[str, Engine]:
    """Engines by role on the config's backend, kept across the jobs of a multirun
    (`wsd.engines.pooled_engine`); HF engines decode `generation.chunk_tokens` per call."""
    engines = {role: pooled_engine(spec, cfg.get("backend"), cfg["model_cache_dir"]) for role, spec in needed.items()}
    for engine in engines.values():
        if isinstance(engine, HFEngine):
            engine.chunk_tokens = cfg["generation"]["chunk_tokens"]
    return engines


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


def _placed(spec: ModelSpec, shard: Shard) -> ModelSpec:
    """On a sharded GPU run, each rank puts a single-device model on its own GPU."""
    if shard.device and spec.device_map is None and resolve_device(spec.device).startswith("cuda"):
        return dataclasses.replace(spec, device=shard.device)
    return spec


def summarize(records: list[dict], method: str) -> dict:
    """Per-run statistics: lengths, time and throughput for every method, the switch
    position for WSD, the handovers for nudging."""
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
    if method == "wsd":
        summary.update(
            mean_keep_count=mean(r["keep_count"] for r in records),
            switched_share=mean(r["switched"] for r in records),
            mean_draft_tokens=mean(r["draft_tokens"] for r in records),
            mean_continuation_tokens=mean(r["continuation_tokens"] for r in records),
            seconds={p: sum(r["seconds"][p] for r in records) for p in ("draft", "check", "target", "total")},
        )
    if method == "nudging":
        summary.update(mean_handovers=mean(r["handovers"] for r in records),
                       mean_pilot_char_share=mean(r["pilot_char_share"] for r in records))
    return summary


def _table_row(record: dict) -> dict:
    """What a W&B table shows per prompt (long fields left to the records file)."""
    keys = ("id", "turn", "prompt", "response", "response_tokens", "stop_reason", "keep_count", "switched",
            "handovers")
    row = {k: record[k] for k in keys if k in record}
    row["seconds"] = record["seconds"]["total"]
    return row


def _generate(method, method_name: str, questions: list[Prompt], done: dict, records: RunRecords, tracker,
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


def run(cfg: DictConfig) -> dict | None:
    """Validate everything cheap first (config, benchmark file, models present), then decode
    only the prompts not yet recorded. Returns the summary (None on ranks other than 0)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    method_name = resolved["method"]["name"]
    entry = method_entry(method_name)
    check_backend(resolved["backend"]["name"])
    if effective_backend(resolved) != resolved["backend"]:
        log.warning("%s runs on backend=hf, not %s: vLLM does not return what it reads at every step",
                    method_name, resolved["backend"]["name"])
        resolved["backend"] = effective_backend(resolved)
        cfg = cfg.copy()
        cfg.backend = resolved["backend"]  # its folder, saved config and report rows say HF
    entry.check(resolved)
    validate_logger(resolved["logger"])
    prompts = load_benchmark(resolved["benchmark"])
    shard = current_shard()
    specs = {role: _placed(ModelSpec.from_config(cfg[role]), shard) for role in entry.roles_for(resolved)}
    for spec in specs.values():
        check_available(spec)
    reward = RewardSettings.from_config(resolved["reward_model"]) if entry.reward else None
    if reward:
        reward.check()

    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    records = RunRecords(out, shard.rank, shard.world)
    done = records.done()
    questions = prompts[shard.rank :: shard.world]  # a question's turns stay in one process
    order = [i for p in prompts for i in p.turn_ids]
    generator = "__".join([method_name, *(cfg[role].name for role in specs)]
                          + ([reward.name or reward.path] if reward else []))
    log.info("%s on %s: %d prompts, %d already recorded, in %s", method_name, cfg.benchmark.name, len(order),
             sum(i in done for i in order), out)

    with tracked(resolved["logger"], stage="generate", group=cfg.name, name=f"{cfg.benchmark.name}/{generator}",
                 config=resolved, folder=out, enabled=shard.rank == 0) as tracker:
        started = time.perf_counter()
        method, written = None, 0
        if any(i not in done for q in questions for i in q.turn_ids):
            from transformers import set_seed

            set_seed(cfg.seed)
            models = pooled_models(specs, resolved)
            if reward:
                models["reward"] = pooled_reward_model(reward)
            method = entry.build(resolved, models)
            label = f"{method_name} {cfg.benchmark.name}" + (f" [rank {shard.rank}]" if shard.world > 1 else "")
            written = _generate(method, method_name, questions, done, records, tracker, label)
        wall = time.perf_counter() - started
        shard.barrier()
        if shard.rank != 0:
            return None
        merged = records.merge(order)
        recorded = {r["id"] for r in merged}
        missing = [i for i in order if i not in recorded]
        if missing:
            raise RuntimeError(f"{len(missing)} prompts have no record after all ranks finished: {missing[:5]}")
        write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_alpaca_eval(out / "alpaca_eval.json", merged, prompts, generator)
        summary = {**summarize(merged, method_name), "method": method_name, "benchmark": cfg.benchmark.name,
                   "generator": generator, "written_now": written, "wall_seconds_now": wall,
                   "forward_passes": getattr(method, "counter", None),
                   "ids": order, "run_dir": str(out), "records": str(records.main.path),
                   "alpaca_eval": str(out / "alpaca_eval.json")}
        write_atomic(out / "summary.json", json.dumps(summary, indent=1))
        tracker.table("records", [_table_row(r) for r in merged])
        tracker.summary({k: v for k, v in summary.items() if k != "ids"})
    log.info("records: %s", records.main.path)
    log.info("alpaca_eval outputs: %s", out / "alpaca_eval.json")
    log.info("summary: %d records, mean %.0f response tokens, %.1f s total, %.1f tokens/s",
             summary["prompts"], summary["mean_response_tokens"], summary["seconds_total"],
             summary["tokens_per_second"])
    return summary


def write_alpaca_eval(path: Path, records: list[dict], prompts: list[Prompt], generator: str) -> None:
    """alpaca_eval's model-outputs format, one entry per record (records in `turn_ids` order
    of `prompts`); multi-turn benchmarks add the turn."""
    questions = [p for p in prompts for _ in p.turn_ids]
    rows = [{"instruction": r["prompt"], "output": r["response"], "generator": generator,
             **({"dataset": p.meta["dataset"]} if p.meta.get("dataset") else {}),
             **({"turn": r["turn"]} if r["turn"] > 1 or p.followups else {})}
            for r, p in zip(records, questions)]
    write_atomic(path, json.dumps(rows, indent=1, ensure_ascii=False))


CONF = Path(__file__).resolve().parents[1] / "conf"


def benchmark_config(name: str) -> dict:
    """A shipped `conf/benchmark/<name>.yaml` entry, for stages that read a benchmark's
    prompts beside their own (decontamination, the IFEval tax task)."""
    path = CONF / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown benchmark {name!r}; accepted: "
                         f"{', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}")
    return OmegaConf.to_container(OmegaConf.load(path))


def compose(overrides: list[str], config_name: str = "generate") -> DictConfig:
    """A stage's config as `python -m pipelines.<stage> <overrides>` builds it (for tests and
    benchmarks, which call `run` or the library directly)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


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


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if summary is not None:
        print_table(summary)


if __name__ == "__main__":
    multirun_flag_first()
    main()
