"""`make reproduce`'s plan: the steps of one experiment in order (each a stage with its
overrides), the user's overrides routed to the stages whose configs take them, each step's
final output, and the ledger of finished steps."""

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

from eval.judges import check_judge_config, check_judge_fits
from wsd.core.store import write_atomic
from wsd.methods import compose
from wsd.runs import identity as identities

log = logging.getLogger("wsd.reproduce")

STAGES = ("collect_generalign", "train_pilot", "generate", "evaluate", "analyze", "evaluate_tax", "report")


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
    """The steps of `cfg.reproduce` in order: the generation runs (every benchmark's with the
    experiment's pilot and the settings study's WSD runs with a forced switch, then the trained
    pilot's) and their judges, the analyses, then the tax runs, then the report."""
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
    judges = {benchmark: r["judges"][benchmark] for benchmark in r["benchmarks"]}
    study = r.get("settings_study") or {}
    for benchmark in (b for b in study.get("benchmarks") or () if b in r["benchmarks"]):
        sized = tuple((r.get("benchmark_overrides") or {}).get(benchmark) or ())
        # without the draft cache: a run that reused the auto-switch run's drafts would not pay for
        # its drafting, and the study compares times
        runs += [(benchmark, (f"benchmark={benchmark}", "method=wsd", f"wsd.force_keep={k}", "draft_cache_dir=null"),
                  sized) for k in study["force_keep"]]
    if "generate" in r["stages"]:
        # each pilot's runs together, over every benchmark: the shared pool (two engines) then loads
        # each pilot once instead of switching pilots on every benchmark
        by_pilot = sorted(runs, key=lambda run: "pilot=trained" in run[1])
        steps += [Step("generate", run, sized) for _, run, sized in by_pilot]
    if "evaluate" in r["stages"]:
        study_judges = study.get("judges") or {}
        for benchmark in r["benchmarks"]:
            for judge in [*judges[benchmark], *study_judges.get(benchmark, ())]:
                check_judge_fits(benchmark, judge_name(judge))
        steps += [Step("evaluate", (*run, *shlex.split(judge)), sized) for benchmark, run, sized in runs
                  for judge in (study_judges.get(benchmark) or judges[benchmark] if _forced(run)
                                else judges[benchmark])]
    if "analyze" in r["stages"]:  # the planned benchmarks among reproduce.analyses: each reads its WSD run
        sizes = r.get("benchmark_overrides") or {}
        steps += [Step("analyze", (f"benchmark={b}", "method=wsd"), tuple(sizes.get(b) or ()))
                  for b in r["analyses"] if b in r["benchmarks"]]
    if "evaluate_tax" in r["stages"]:
        steps += [Step("evaluate_tax", (f"method={m}", *pilot)) for pilot in pilots for m in r["tax_methods"]
                  if not pilot or m in r["trained_pilot_methods"]]
    if "report" in r["stages"]:
        steps.append(Step("report", ()))
    return steps


def _forced(run: tuple[str, ...]) -> bool:
    """Is this generate run one of the settings study's (a forced switch)?"""
    return any(o.startswith("wsd.force_keep=") for o in run)


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


def stage_overrides(stage: str, overrides: list[str]) -> list[str]:
    """The user's overrides that this stage's config takes: `tax.limit=4` means nothing to
    the generate stage (unless an experiment added a `tax` block there too)."""
    from hydra.errors import ConfigCompositionException

    kept = []
    for override in sorted(overrides, key=lambda o: "." in o.split("=", 1)[0]):  # config choices first
        try:
            compose([*kept, override], stage)
        except ConfigCompositionException:
            continue
        kept.append(override)
    return kept


def finished_output(step: Step, cfg: DictConfig) -> Path:
    """The file a step writes last: its summary (in the folder `wsd.runs.identity` derives), or the
    report's index."""
    if step.stage == "collect_generalign":
        return identities.collection(cfg).folder / "summary.json"
    if step.stage == "train_pilot":
        return identities.training(cfg).folder / "summary.json"
    if step.stage == "generate":
        return identities.generation(cfg).folder / "summary.json"
    if step.stage == "evaluate":
        return identities.evaluation(cfg, identities.generation(cfg).folder, cfg.benchmark.name).folder / "summary.json"
    if step.stage == "evaluate_tax":
        return identities.tax(cfg).folder / "summary.json"
    if step.stage == "analyze":
        return identities.analysis(cfg).folder / "summary.json"
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


def launch_training(launcher: str, overrides: list[str]) -> None:
    """The training stage in its own ranks (e.g. `accelerate launch --num_processes 2`)."""
    command = [*shlex.split(launcher), "-m", "pipelines.train_pilot", *overrides]
    if command[0] == "accelerate":  # the one next to this interpreter (the project's venv)
        command[0] = str(Path(sys.executable).with_name("accelerate"))
    log.info("launching: %s", shlex.join(command))
    subprocess.run(command, check=True)
