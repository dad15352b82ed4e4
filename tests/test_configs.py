"""Every shipped config composes, and opens with the command that runs it."""

from pathlib import Path

import pytest

from wsd.methods import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
TASKS = Path(__file__).resolve().parents[1] / "eval" / "tasks"
CHOICES = sorted((path.parent.name, path.stem) for path in CONF.glob("*/*.yaml"))


@pytest.mark.parametrize("group, choice", CHOICES, ids=[f"{g}/{c}" for g, c in CHOICES])
def test_every_config_choice_composes(group, choice):
    stage = {"judge": "evaluate", "deepspeed": "train_pilot"}.get(group, "generate")
    needed = [f"{group}.path=/models/mine"] if choice == "custom" else []  # `custom` takes any id or folder
    added = "+" if group == "sweep" else ""  # a sweep is added to a stage's defaults, not chosen among them
    cfg = compose([f"{added}{group}={choice}", *needed], stage)
    assert cfg.method.name and cfg.pilot.name and cfg.base.name


STAGES = sorted(p.stem for p in (CONF.parent / "pipelines").glob("*.py") if p.stem != "__init__")


def test_every_stage_has_a_config():
    assert STAGES == sorted(p.stem for p in CONF.glob("*.yaml"))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_config_composes(stage):
    assert compose([], stage).seed == 42


@pytest.mark.parametrize("path", sorted([*CONF.glob("*.yaml"), *CONF.glob("*/*.yaml"), *TASKS.glob("*.yaml")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_says_how_to_run_it(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(line.startswith("# Run: ") for line in header), f"{path} opens without a '# Run:' line"
