"""GenerAlign collection: prompt sources -> decontaminated train/test prompts -> sampled
candidate answers from teacher methods -> judge scores -> DPO pairs and SFT targets, saved
as `datasets` DatasetDicts, JSONL and a dataset card, in `wsd.runs.identity.collection`'s folder
(`outputs/generalign/<experiment>__<key>`). Resumable per prompt.

    python -m pipelines.collect_generalign experiment=mini
"""

from __future__ import annotations

import json
import logging
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import multirun_flag_first
from wsd.backends.engines import ModelPool
from wsd.backends.models import ModelSpec, check_available
from wsd.core.store import RecordFile, write_atomic
from wsd.experiments.generalign import answer_and_score, check_config, prepare_prompts, write_datasets
from wsd.methods import method_entry
from wsd.runs import identity as identities
from wsd.runs.tracking import tracked, validate_logger

log = logging.getLogger("wsd.experiments.generalign")

POOL = ModelPool()  # the teachers' and the local judge's models


def run(cfg: DictConfig, pool: ModelPool | None = None) -> dict:
    """Validate the config, sources and models first; then answer and score only the prompts
    not yet recorded; then (re)build the datasets and the card from all records."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_config(resolved)
    validate_logger(resolved["logger"])
    g = {**resolved["generalign"], "seed": cfg.seed}
    roles = sorted({r for t in g["teachers"] for r in method_entry(t["method"]).roles})
    specs = {role: ModelSpec.from_config(cfg[role]) for role in roles}
    for spec in specs.values():
        check_available(spec)
    identity = identities.collection(cfg)
    out = identity.claim(identities.collection)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    with tracked(resolved["logger"], stage="collect_generalign", group=cfg.name, name=f"generalign/{out.name}",
                 config=resolved, folder=out) as tracker:
        started = time.perf_counter()
        parts, decontamination = prepare_prompts(g, out)
        records = RecordFile(out / "candidates.jsonl")
        done = {r["id"] for r in records.read()}
        everything = [(name, p) for name in ("train", "test") for p in parts[name]]
        log.info("%d prompts, %d already answered, in %s", len(everything),
                 sum(p.id in done for _, p in everything), out)
        if any(p.id not in done for _, p in everything):
            pool = POOL if pool is None else pool
            with pool.holding():  # the teachers stay while the judges load
                answer_and_score(resolved, g, pool.engines(specs, resolved), everything, done, records, tracker, pool)
        summary = write_datasets(out, records.read(), g, decontamination)
        summary.update(identity=identity.record(), wall_seconds_now=time.perf_counter() - started)
        write_atomic(out / "summary.json", json.dumps(summary, indent=1))
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    log.info("GenerAlign: %s", out)
    return summary


@hydra.main(config_path="../conf", config_name="collect_generalign", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    print(json.dumps({k: summary[k] for k in ("prompts", "pairs", "sft", "by_category", "margin")}, indent=1))


if __name__ == "__main__":
    multirun_flag_first()
    main()
