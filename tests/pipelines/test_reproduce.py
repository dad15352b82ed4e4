import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines import reproduce
from tests.conftest import REPO, tiny_overrides
from wsd.backends import engines
from wsd.backends.models import ModelSpec
from wsd.experiments import plan
from wsd.methods import compose, method_entry

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
GSM8K = REPO / "tests" / "fixtures" / "gsm8k_mini.jsonl"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_step_of_every_experiment_composes(experiment):
    """The paper experiments cannot run here, but every step of their chain is a valid config."""
    cfg = compose([f"experiment={experiment}"], "reproduce")
    steps = plan.plan(cfg)
    assert [s.stage for s in steps][:2] == ["collect_generalign", "train_pilot"] and steps[-1].stage == "report"
    for step in steps:
        step_cfg = compose([*step.defaults, f"experiment={experiment}", *step.overrides], step.stage)
        assert plan.finished_output(step, step_cfg).name in ("summary.json", "README.md")
        if "pilot=trained" in step.overrides:  # judged by the experiment's own pilot, not the one under test
            assert step_cfg.judge_model.name == cfg.pilot.name != step_cfg.pilot.name


def test_paper_experiments_name_the_papers_models():
    for experiment, base in (("paper_llama3_70b", "Llama-3-70B"), ("paper_llama31_70b", "Llama-3.1-70B"),
                             ("paper_gemma2_27b", "Gemma-2-27B")):
        cfg = compose([f"experiment={experiment}"], "reproduce")
        assert (cfg.name, cfg.base.name, cfg.pilot.name) == (experiment, base, "Pilot-3B")
        assert cfg.train.model.path == "meta-llama/Llama-3.2-3B-Instruct"
        assert list(cfg.reproduce.benchmarks) == ["hh_rlhf", "truthfulqa", "alpaca_eval", "arena_hard", "mt_bench"]


def test_a_plan_whose_judge_cannot_score_its_benchmark_fails_when_composed():
    """Arena-Hard has no reference answers: a pairwise judge against them would score nothing."""
    cfg = compose(["experiment=paper_llama3_70b", "reproduce.judges.arena_hard=['judge=local_llm_judge']"], "reproduce")
    with pytest.raises(ValueError, match="judge 'local_llm_judge' needs reference answers, which benchmark "
                                         "'arena_hard' does not have"):
        plan.plan(cfg)


def _evaluations(experiment: str, *overrides: str):
    cfg = compose([f"experiment={experiment}", *overrides], "reproduce")
    steps = [s for s in plan.plan(cfg) if s.stage == "evaluate"]
    return steps, [compose([*s.defaults, f"experiment={experiment}", *overrides, *s.overrides], "evaluate")
                   for s in steps]


def test_the_paper_plans_judge_mt_bench_arena_hard_and_alpaca_eval_with_the_papers_judges(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    steps, configs = _evaluations("paper_llama3_70b")
    plan.check_steps(steps, configs)
    judges = {(c.benchmark.name, c.judge.name): c.judge for c in configs}
    assert judges[("mt_bench", "mt_bench_grading")].client.model == "gpt-4"
    assert not judges[("mt_bench", "mt_bench_grading")].proxy and not judges[("arena_hard", "arena_hard")].proxy
    assert judges[("alpaca_eval", "alpaca_eval")].annotators_config == "weighted_alpaca_eval_gpt4_turbo"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="https://api.openai.com/v1 needs an API key in the environment variable "
                                         "OPENAI_API_KEY"):
        plan.check_steps(steps, configs)


def test_the_default_plan_serves_its_judge_locally_and_checks_the_baselines():
    steps, configs = _evaluations("mini", "reproduce.benchmarks=[alpaca_eval, arena_hard, mt_bench]")
    plan.check_steps(steps, configs)
    served = {c.judge.name for c in configs if c.judge.get("endpoint") == "local"}
    assert served == {"alpaca_eval", "arena_hard", "mt_bench_grading"}
    steps, configs = _evaluations("mini", "reproduce.benchmarks=[arena_hard]", "benchmark.source=hub")
    with pytest.raises(ValueError, match="not the shipped v2.0 ones.*judge.baseline_file"):
        plan.check_steps(steps, configs)


def test_the_plans_sizes_per_benchmark_yield_to_the_users():
    steps, configs = _evaluations("mini")
    limits = {(c.benchmark.name, c.method.name): c.benchmark.limit for c in configs}
    assert limits[("mt_bench", "wsd")] == limits[("arena_hard", "base")] == 4 and limits[("alpaca_eval", "wsd")] == 16
    assert all(s.defaults == ("benchmark.limit=4",) for s in steps if "benchmark=mt_bench" in s.overrides)
    _, configs = _evaluations("mini", "benchmark.limit=3")
    assert {c.benchmark.limit for c in configs} == {3}


def test_a_bad_plan_is_named_before_anything_runs(tmp_path):
    cfg = compose([f"output_root={tmp_path}", "reproduce.benchmarks=[ifeval, nosuch]"], "reproduce")
    with pytest.raises(ValueError, match="no entry for benchmark 'nosuch'"):
        plan.plan(cfg)
    with pytest.raises(ValueError, match="unknown reproduce.stages \\['trian'\\]"):
        plan.plan(compose(["reproduce.stages=[trian]"], "reproduce"))
    with pytest.raises(ValueError, match="override\\(s\\) \\['tax.limt=3'\\] fit no stage"):
        reproduce.run([f"output_root={tmp_path}", "experiment=mini", "tax.limt=3"])
    assert not any(tmp_path.iterdir())


def test_the_chain_runs_once_then_only_says_where_the_results_are(tiny_models, tmp_path):
    overrides = tiny_overrides(
        tiny_models, tmp_path, "name=chain", "reproduce.stages=[generate,evaluate,analyze,evaluate_tax,report]",
        "reproduce.benchmarks=[mt_bench]", "reproduce.methods=[base,wsd]", "benchmark.limit=1",
        "reproduce.judges.mt_bench=['judge=harmlessness']", "reproduce.tax_methods=[wsd]", "tax.tasks=[wsd_gsm8k]",
        f"tax.gsm8k_path={GSM8K}", "tax.limit=2", "tax.max_gen_toks=16", "reproduce.analyses=[mt_bench]",
        "analysis.limit=2", "analysis.max_answer_tokens=24", "analysis.prefix_tokens=[0,2]",
        "analysis.continuation_tokens=4", "analysis.continuation_answers=1", "analysis.stage_judge.endpoint=null")
    summary = reproduce.run(overrides)
    assert [s["step"] for s in summary["ran"]] == [
        "generate benchmark=mt_bench method=base", "generate benchmark=mt_bench method=wsd",
        "evaluate benchmark=mt_bench method=base judge=harmlessness",
        "evaluate benchmark=mt_bench method=wsd judge=harmlessness", "analyze benchmark=mt_bench method=wsd",
        "evaluate_tax method=wsd", "report"]
    index = Path(summary["report"])
    assert index.exists() and "main" in index.read_text()
    assert "[analyses_mt_bench.md](analyses_mt_bench.md)" in index.read_text()
    assert "Difficulty by position under the base (tiny-base)" in (index.parent / "analyses_mt_bench.md").read_text()
    assert "paper (Llama-3-70B)" in (index.parent / "main.md").read_text()
    assert "| mt_bench | harmlessness/refusal† | ours (tiny-base, tiny-pilot pilot) |" in \
        (index.parent / "other_metrics.md").read_text()
    again = reproduce.run(overrides)
    assert again["ran"] == []


def test_a_two_point_sweep_runs_through_evaluation_and_the_report(tiny_models, tmp_path):
    """`make sweep`'s commands, with the sweep cut to two thresholds at one window."""
    common = [*tiny_overrides(tiny_models, tmp_path, "benchmark=mt_bench", "benchmark.limit=1", "name=swept"),
              "wsd.threshold=0.5,0.9", "wsd.window=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def stage(module, *args):
        done = subprocess.run([sys.executable, "-m", f"pipelines.{module}", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    stage("generate", "+sweep=threshold", *common)
    base = [o for o in common if not o.startswith("wsd.")]
    stage("generate", "method=base", *base)
    stage("evaluate", "+sweep=threshold", "judge=harmlessness", *common)
    stage("evaluate", "method=base", "judge=harmlessness", *base)
    stage("report", *base)
    folder = tmp_path / "outputs" / "reports" / "swept"
    sweep = pd.read_csv(folder / "sweep.csv")
    assert sorted(sweep["threshold"]) == [0.5, 0.9] and set(sweep["window"]) == {2}
    assert (folder / "metric_vs_threshold.png").stat().st_size > 0 and (folder / "time_vs_threshold.png").exists()


def test_the_default_plan_runs_the_settings_study_and_the_analyses():
    steps = plan.plan(compose(["experiment=mini"], "reproduce"))
    forced = [s for s in steps if any(o.startswith("wsd.force_keep=") for o in s.overrides)]
    assert [s.overrides[2:] for s in forced if s.stage == "generate"] == [
        (f"wsd.force_keep={k}", "draft_cache_dir=null") for k in (1, 8, 32, "draft")]
    assert {s.overrides[-1] for s in forced if s.stage == "evaluate"} == {"judge=reference_similarity"}
    assert all("benchmark=alpaca_eval" in s.overrides for s in forced)
    [analyze] = [s for s in steps if s.stage == "analyze"]
    assert analyze.overrides == ("benchmark=alpaca_eval", "method=wsd")
    stages = [s.stage for s in steps]
    assert stages.index("analyze") > max(i for i, s in enumerate(stages) if s == "evaluate")
    cfg = compose([*analyze.defaults, "experiment=mini", *analyze.overrides], "analyze")
    assert (cfg.analysis.limit, cfg.analysis.max_answer_tokens) == (48, 256)
    assert plan.finished_output(analyze, cfg).parent.parent.name == "alpaca_eval"


def test_the_default_plan_loads_each_model_once_for_its_generation_runs(monkeypatch):
    """The generation runs of one pilot come together: the shared two-engine pool loads base,
    pilot and trained pilot once each, not a pilot per benchmark (a vLLM start is most of a
    generation step on a CPU)."""
    loaded = []
    monkeypatch.setattr(engines, "load_engine", lambda spec, backend, cache_dir: loaded.append(spec.name) or object())
    pool = engines.ModelPool()
    for step in (s for s in plan.plan(compose(["experiment=mini"], "reproduce")) if s.stage == "generate"):
        cfg = compose([*step.defaults, "experiment=mini", *step.overrides], "generate")
        roles = method_entry(cfg.method.name).roles_for(cfg)
        pool.engines({role: ModelSpec.from_config(cfg[role]) for role in roles}, OmegaConf.to_container(cfg))
    assert sorted(loaded) == sorted(["gemma-3-270m", "SmolLM2-135M-Instruct", "trained-pilot-mini"])
