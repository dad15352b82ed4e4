"""Generation stage: one method over one benchmark, one JSON record per prompt (and turn),
resumable, logged, and shardable across processes. Writes to `wsd.runs.identity.generation`'s
folder (`outputs/generate/<benchmark>/<method>__<models>__<key>`).

    python -m pipelines.generate benchmark=alpaca_eval method=wsd benchmark.limit=5
    python -m pipelines.generate -m benchmark=alpaca_eval,mt_bench method=base,wsd benchmark.limit=8
    accelerate launch --num_processes 2 -m pipelines.generate ...   (add --multi_gpu on CPU)
"""

from __future__ import annotations

import json
import logging
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import multirun_flag_first
from wsd.api import Generator
from wsd.backends.engines import ModelPool, check_backend
from wsd.core.store import RunRecords, write_atomic
from wsd.data.prompt_sets import load_benchmark
from wsd.methods import effective_backend
from wsd.runs import identity as identities
from wsd.runs.generate_stage import (
    current_shard,
    generate_turns,
    placed,
    print_table,
    summarize,
    table_row,
    write_alpaca_eval,
)
from wsd.runs.tracking import tracked, validate_logger

log = logging.getLogger("wsd.generate")

POOL = ModelPool()  # this stage's models, kept across the jobs of a multirun


def run(cfg: DictConfig, pool: ModelPool | None = None) -> dict | None:
    """Validate everything cheap first (config, benchmark file, models present), then decode
    only the prompts not yet recorded, with the models of `pool` (the stage's own when not
    given). Returns the summary (None on ranks other than 0)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    method_name = resolved["method"]["name"]
    check_backend(resolved["backend"])
    if effective_backend(resolved) != resolved["backend"]:
        log.warning("%s runs on backend=hf, not %s: vLLM does not return what it reads at every step",
                    method_name, resolved["backend"]["name"])
        resolved["backend"] = effective_backend(resolved)
        cfg = cfg.copy()
        cfg.backend = resolved["backend"]  # its folder, saved config and report rows say HF
    shard = current_shard()
    runner = Generator(resolved, POOL if pool is None else pool, place=lambda spec: placed(spec, shard))
    validate_logger(resolved["logger"])
    prompts = load_benchmark(resolved["benchmark"])

    identity = identities.generation(cfg)
    out = identity.claim()
    records = RunRecords(out, shard.rank, shard.world)
    done = records.done()
    questions = prompts[shard.rank :: shard.world]  # a question's turns stay in one process
    order = [i for p in prompts for i in p.turn_ids]
    reward = runner.reward
    generator = "__".join([method_name, *(cfg[role].name for role in runner.specs)]
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
            label = f"{method_name} {cfg.benchmark.name}" + (f" [rank {shard.rank}]" if shard.world > 1 else "")
            with runner.pool.holding():
                method = runner.build()
                written = generate_turns(method, method_name, questions, done, records, tracker, label)
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
                   "ids": order, "identity": identity.record(), "run_dir": str(out), "records": str(records.main.path),
                   "alpaca_eval": str(out / "alpaca_eval.json")}
        write_atomic(out / "summary.json", json.dumps(summary, indent=1))
        tracker.table("records", [table_row(r) for r in merged])
        tracker.summary({k: v for k, v in summary.items() if k != "ids"})
    log.info("records: %s", records.main.path)
    log.info("alpaca_eval outputs: %s", out / "alpaca_eval.json")
    log.info("summary: %d records, mean %.0f response tokens, %.1f s total, %.1f tokens/s",
             summary["prompts"], summary["mean_response_tokens"], summary["seconds_total"],
             summary["tokens_per_second"])
    return summary


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if summary is not None:
        print_table(summary)


if __name__ == "__main__":
    multirun_flag_first()
    main()
