"""`make reproduce`: the whole chain for one experiment, stage after stage:
GenerAlign collection -> pilot training (DeepSpeed ranks through a launcher) -> generation
(benchmarks x methods, with the experiment's pilot and the trained one) -> alignment
evaluation -> alignment tax -> report.

Every step is one stage run with the user's overrides plus its own (a benchmark, a method,
a judge). All step configs are composed and checked before anything runs. A step whose
output is recorded as finished for the same resolved config is skipped, so a rerun after an
interruption finishes the rest, and a rerun after completion only prints where the results
are (each stage also resumes inside itself).

    python -m pipelines.reproduce experiment=mini
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eval.endpoints import kept_servers
from eval.judges import check_judge_config, check_judge_fits
from pipelines import generate
from wsd.store import config_key, write_atomic

log = logging.getLogger("wsd.reproduce")

STAGES = ("collect_generalign", "train_pilot", "generate", "evaluate", "evaluate_tax", "report")


@dataclass(frozen=True)
class Step:
    stage: str
    overrides: tuple[str, ...]
    defaults: tuple[str, ...] = ()  # the plan's sizes (reproduce.benchmark_overrides): the user's overrides win

    @property
    def label(self) -> str:
        """The stage and its overrides (the fixed judge model left out: it is always the same)."""
        return " ".join([self.stage, *(o for o in self.overrides if not o.startswith("judge_model="))])


def plan(cfg: DictConfig) -> list[Step]:
    """The steps of `cfg.reproduce` in order: each benchmark's generation runs (the trained
    pilot's too) and their judges, then the tax runs, then the report."""
    r = OmegaConf.to_container(cfg.reproduce, resolve=True)
    unknown = [s for s in r["stages"] if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown reproduce.stages {unknown}; accepted: {', '.join(STAGES)}")
    trained = "train_pilot" in r["stages"]
    # the trained pilot is judged by the same local judge as the experiment's own pilot
    judge_model = f"judge_model={hydra_value(OmegaConf.to_container(cfg.judge_model, resolve=True))}"
    pilots = [()] + ([("pilot=trained", judge_model)] if trained else [])
    steps = []
    if "collect_generalign" in r["stages"]:
        steps.append(Step("collect_generalign", ()))
    if trained:
        steps.append(Step("train_pilot", tuple(r["train_overrides"])))
    runs = []
    for benchmark in r["benchmarks"]:
        if benchmark not in r["judges"]:
            raise ValueError(f"reproduce.judges has no entry for benchmark {benchmark!r}")
        sized = tuple((r.get("benchmark_overrides") or {}).get(benchmark) or ())
        for pilot in pilots:
            methods = r["methods"] if not pilot else r["trained_pilot_methods"]
            runs += [(benchmark, (f"benchmark={benchmark}", f"method={m}", *pilot), sized) for m in methods]
    if "generate" in r["stages"]:
        steps += [Step("generate", run, sized) for _, run, sized in runs]
    if "evaluate" in r["stages"]:
        for benchmark in r["benchmarks"]:
            for judge in r["judges"][benchmark]:
                check_judge_fits(benchmark, judge_name(judge))
        steps += [Step("evaluate", (*run, *shlex.split(judge)), sized) for benchmark, run, sized in runs
                  for judge in r["judges"][benchmark]]
    if "evaluate_tax" in r["stages"]:
        steps += [Step("evaluate_tax", (f"method={m}", *pilot)) for pilot in pilots for m in r["tax_methods"]
                  if not pilot or m in r["trained_pilot_methods"]]
    if "report" in r["stages"]:
        steps.append(Step("report", ()))
    return steps


def check_steps(steps: list[Step], configs: list[DictConfig]) -> None:
    """Each evaluation of the plan, composed, yields its metric: its judge fits its benchmark,
    and a judge's endpoint has its URL, model and key, before anything runs."""
    for step, step_cfg in zip(steps, configs):
        if step.stage == "evaluate":
            check_judge_config(OmegaConf.to_container(step_cfg.judge, resolve=True),
                               OmegaConf.to_container(step_cfg.benchmark, resolve=True))


def judge_name(overrides: str) -> str:
    """The judge that one `reproduce.judges` entry (evaluate-stage overrides) names."""
    names = [o.split("=", 1)[1] for o in shlex.split(overrides) if o.startswith("judge=")]
    if len(names) != 1:
        raise ValueError(f"reproduce.judges entry {overrides!r} must name one judge (judge=NAME)")
    return names[0]


def hydra_value(value) -> str:
    """`value` in Hydra's override grammar (strings quoted), for a whole config node."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _stage(name: str):
    import importlib

    return importlib.import_module(f"pipelines.{name}")


def stage_overrides(stage: str, overrides: list[str]) -> list[str]:
    """The user's overrides that this stage's config takes: `tax.limit=4` means nothing to
    the generate stage (unless an experiment added a `tax` block there too)."""
    from hydra.errors import ConfigCompositionException

    kept = []
    for override in sorted(overrides, key=lambda o: "." in o.split("=", 1)[0]):  # config choices first
        try:
            _stage(stage).compose([*kept, override])
        except ConfigCompositionException:
            continue
        kept.append(override)
    return kept


def finished_output(step: Step, cfg: DictConfig) -> Path:
    """The file a step writes last: its summary, or the report's index."""
    from pipelines import collect_generalign, evaluate, evaluate_tax, train_pilot

    if step.stage == "collect_generalign":
        return collect_generalign.collect_dir(cfg) / "summary.json"
    if step.stage == "train_pilot":
        return train_pilot.train_dir(cfg) / "summary.json"
    if step.stage == "generate":
        return generate.run_dir(cfg) / "summary.json"
    if step.stage == "evaluate":
        return evaluate.judge_dir(cfg, generate.run_dir(cfg)) / "summary.json"
    if step.stage == "evaluate_tax":
        return evaluate_tax.tax_dir(cfg) / "summary.json"
    return Path(cfg.output_root) / "reports" / cfg.name / "README.md"


class Ledger:
    """Which steps finished for which resolved config (`outputs/reproduce/<name>/ledger.json`)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = json.loads(path.read_text()) if path.exists() else {}

    def done(self, step: Step, key: str, output: Path) -> bool:
        entry = self.entries.get(step.label)
        return entry is not None and entry["key"] == key and output.exists()

    def record(self, step: Step, key: str, output: Path, seconds: float) -> None:
        self.entries[step.label] = {"key": key, "output": str(output), "seconds": round(seconds, 1),
                                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.entries, indent=1))


def run(overrides: list[str]) -> dict:
    """Compose (and so check) every step first; then run the unfinished ones in order. Each
    stage takes the overrides its config knows; one that no stage knows is an error. A
    step's output and key are taken just before it runs: `pilot=trained` names a model that
    only exists once training is done."""
    fitting = {"reproduce": stage_overrides("reproduce", overrides)}
    cfg = compose(fitting["reproduce"])
    steps = plan(cfg)
    fitting.update({stage: stage_overrides(stage, overrides) for stage in dict.fromkeys(s.stage for s in steps)})
    unused = [o for o in overrides if not any(o in kept for kept in fitting.values())]
    if unused:
        raise ValueError(f"override(s) {unused} fit no stage of the plan ({', '.join(fitting)})")
    configs = [_stage(s.stage).compose([*s.defaults, *fitting[s.stage], *s.overrides]) for s in steps]
    check_steps(steps, configs)
    root = Path(cfg.output_root) / "reproduce" / cfg.name
    ledger = Ledger(root / "ledger.json")
    log.info("experiment %s: %d steps", cfg.name, len(steps))
    started, timings = time.perf_counter(), []
    with kept_servers():  # a local judge server starts once, for every evaluate step that needs it
        for i, (step, step_cfg) in enumerate(zip(steps, configs)):
            run_step(f"[{i + 1}/{len(steps)}]", step, step_cfg, cfg, fitting, ledger, timings)
    summary = {"experiment": cfg.name, "steps": len(steps), "ran": timings,
               "wall_seconds": round(time.perf_counter() - started, 1),
               "report": str(Path(cfg.output_root) / "reports" / cfg.name / "README.md")}
    if timings:
        write_atomic(root / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json", json.dumps(summary, indent=1))
    return summary


def run_step(progress: str, step: Step, step_cfg: DictConfig, cfg: DictConfig, fitting: dict, ledger: Ledger,
             timings: list[dict]) -> None:
    """One step, unless the ledger says it finished for the same resolved config."""
    key, output = config_key(OmegaConf.to_container(step_cfg, resolve=True)), finished_output(step, step_cfg)
    if ledger.done(step, key, output) and not (step.stage == "report" and timings):
        return  # (the report is rebuilt whenever a step before it ran)
    log.info("%s %s", progress, step.label)
    began = time.perf_counter()
    if step.stage == "train_pilot" and cfg.reproduce.train_launcher:
        launch_training(cfg.reproduce.train_launcher, [*fitting[step.stage], *step.overrides])
    else:
        _stage(step.stage).run(step_cfg)
    seconds = time.perf_counter() - began
    timings.append({"step": step.label, "seconds": round(seconds, 1)})
    ledger.record(step, key, output, seconds)


def launch_training(launcher: str, overrides: list[str]) -> None:
    """The training stage in its own ranks (e.g. `accelerate launch --num_processes 2`)."""
    command = [*shlex.split(launcher), "-m", "pipelines.train_pilot", *overrides]
    if command[0] == "accelerate":  # the one next to this interpreter (the project's venv)
        command[0] = str(Path(sys.executable).with_name("accelerate"))
    log.info("launching: %s", shlex.join(command))
    subprocess.run(command, check=True)


def compose(overrides: list[str]) -> DictConfig:
    """The plan's config (conf/reproduce.yaml) with these overrides."""
    return generate.compose(overrides, config_name="reproduce")


def main(argv: list[str] | None = None) -> None:
    """`python -m pipelines.reproduce <overrides>`: not a Hydra app itself, since its
    overrides are meant for the stages it runs (and each takes those it knows)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    summary = run(list(sys.argv[1:] if argv is None else argv))
    done = "nothing left to run" if not summary["ran"] else f"ran {len(summary['ran'])} steps in {summary['wall_seconds']:.0f} s"
    print(f"experiment {summary['experiment']}: {done}; results: {summary['report']}")


if __name__ == "__main__":
    main()
