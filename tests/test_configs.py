"""Every shipped config composes, and opens with the command that runs it."""

from pathlib import Path

import pytest

from pipelines import collect_generalign, evaluate, evaluate_tax, generate, report, reproduce, train_pilot, train_reward

CONF = Path(__file__).resolve().parents[1] / "conf"
TASKS = Path(__file__).resolve().parents[1] / "eval" / "tasks"
CHOICES = sorted((path.parent.name, path.stem) for path in CONF.glob("*/*.yaml"))


@pytest.mark.parametrize("group, choice", CHOICES, ids=[f"{g}/{c}" for g, c in CHOICES])
def test_every_config_choice_composes(group, choice):
    compose = {"judge": evaluate.compose, "deepspeed": train_pilot.compose}.get(group, generate.compose)
    needed = [f"{group}.path=/models/mine"] if choice == "custom" else []  # `custom` takes any id or folder
    added = "+" if group == "sweep" else ""  # a sweep is added to a stage's defaults, not chosen among them
    cfg = compose([f"{added}{group}={choice}", *needed])
    assert cfg.method.name and cfg.pilot.name and cfg.base.name


@pytest.mark.parametrize("stage", [generate, evaluate, evaluate_tax, collect_generalign, train_pilot, train_reward, report,
                                   reproduce])
def test_every_stage_config_composes(stage):
    assert stage.compose([]).seed == 42


@pytest.mark.parametrize("path", sorted([*CONF.glob("*.yaml"), *CONF.glob("*/*.yaml"), *TASKS.glob("*.yaml")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_says_how_to_run_it(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(line.startswith("# Run: ") for line in header), f"{path} opens without a '# Run:' line"
