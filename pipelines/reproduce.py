"""`make reproduce`: the whole chain for one experiment, stage after stage:
GenerAlign collection -> pilot training (DeepSpeed ranks through a launcher) -> generation
(benchmarks x methods, with the experiment's pilot and the trained one) -> alignment
evaluation -> alignment tax -> report.

Every step is one stage run with the user's overrides plus its own (a benchmark, a method,
a judge); the plan (`wsd.experiments.plan`) is composed and checked before anything runs. A step whose
output is recorded as finished for the same resolved config is skipped, so a rerun after an
interruption finishes the rest, and a rerun after completion only prints where the results
are (each stage also resumes inside itself). Each step's input and output folder come from
`wsd.runs.identity`, as when the stage runs alone.

    python -m pipelines.reproduce experiment=mini
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eval.endpoints import kept_servers
from wsd.backends.engines import ModelPool
from wsd.core.store import config_key, write_atomic
from wsd.experiments.plan import Ledger, Step, check_steps, finished_output, launch_training, plan, stage_overrides
from wsd.methods import compose

log = logging.getLogger("wsd.reproduce")


def run(overrides: list[str]) -> dict:
    """Compose (and so check) every step first; then run the unfinished ones in order. Each
    stage takes the overrides its config knows; one that no stage knows is an error. A
    step's output and key are taken just before it runs: `pilot=trained` names a model that
    only exists once training is done."""
    fitting = {"reproduce": stage_overrides("reproduce", overrides)}
    cfg = compose(fitting["reproduce"], "reproduce")
    steps = plan(cfg)
    fitting.update({stage: stage_overrides(stage, overrides) for stage in dict.fromkeys(s.stage for s in steps)})
    unused = [o for o in overrides if not any(o in kept for kept in fitting.values())]
    if unused:
        raise ValueError(f"override(s) {unused} fit no stage of the plan ({', '.join(fitting)})")
    configs = [compose([*s.defaults, *fitting[s.stage], *s.overrides], s.stage) for s in steps]
    check_steps(steps, configs)
    root = Path(cfg.output_root) / "reproduce" / cfg.name
    ledger = Ledger(root / "ledger.json")
    log.info("experiment %s: %d steps", cfg.name, len(steps))
    started, timings = time.perf_counter(), []
    pool = ModelPool()  # one set of models for every step: a step reuses what the one before loaded
    with kept_servers():  # a local judge server starts once, for every evaluate step that needs it
        for i, (step, step_cfg) in enumerate(zip(steps, configs)):
            run_step(f"[{i + 1}/{len(steps)}]", step, step_cfg, cfg, fitting, ledger, timings, pool)
    summary = {"experiment": cfg.name, "steps": len(steps), "ran": timings,
               "wall_seconds": round(time.perf_counter() - started, 1),
               "report": str(Path(cfg.output_root) / "reports" / cfg.name / "README.md")}
    if timings:
        write_atomic(root / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json", json.dumps(summary, indent=1))
    return summary


def run_step(progress: str, step: Step, step_cfg: DictConfig, cfg: DictConfig, fitting: dict, ledger: Ledger,
             timings: list[dict], pool: ModelPool) -> None:
    """One step, unless the ledger says it finished for the same resolved config: the stage's
    `run(cfg)` (with the shared pool where the stage loads models), found by its name."""
    key, output = config_key(OmegaConf.to_container(step_cfg, resolve=True)), finished_output(step, step_cfg)
    if ledger.done(step, key, output) and not (step.stage == "report" and timings):
        return  # (the report is rebuilt whenever a step before it ran)
    log.info("%s %s", progress, step.label)
    began = time.perf_counter()
    if step.stage == "train_pilot" and cfg.reproduce.train_launcher:
        launch_training(cfg.reproduce.train_launcher, [*fitting[step.stage], *step.overrides])
    else:
        stage = importlib.import_module(f"pipelines.{step.stage}")
        if step.stage == "report":  # (it loads no model)
            stage.run(step_cfg)
        else:
            stage.run(step_cfg, pool)
    seconds = time.perf_counter() - began
    timings.append({"step": step.label, "seconds": round(seconds, 1)})
    ledger.record(step, key, output, seconds)


def main(argv: list[str] | None = None) -> None:
    """`python -m pipelines.reproduce <overrides>`: not a Hydra app itself, since its
    overrides are meant for the stages it runs (and each takes those it knows)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    summary = run(list(sys.argv[1:] if argv is None else argv))
    done = "nothing left to run" if not summary["ran"] else f"ran {len(summary['ran'])} steps in {summary['wall_seconds']:.0f} s"
    print(f"experiment {summary['experiment']}: {done}; results: {summary['report']}")


if __name__ == "__main__":
    main()
