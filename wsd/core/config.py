"""Where the shipped configs live, and a shipped benchmark's entry read without composing a
stage (`wsd.methods.compose` composes a stage's config as its command line does)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from wsd.core.schemas import (  # (importing it registers the schemas the stage configs start from)
    BENCHMARK_BLOCKS,
    BenchmarkBlock,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def benchmark_config(name: str) -> dict:
    """A shipped `conf/benchmark/<name>.yaml` entry, for stages that read a benchmark's
    prompts beside their own (decontamination, the IFEval tax task)."""
    path = CONF / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown benchmark {name!r}; accepted: "
                         f"{', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}")
    entry = OmegaConf.load(path)
    entry.pop("defaults", None)  # (its schema, wsd/core/schemas.py, which it fills in)
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(BENCHMARK_BLOCKS.get(name, BenchmarkBlock)(name=name)), entry))
