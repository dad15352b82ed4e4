"""The stages' configs as their command lines compose them, for code that runs a stage or
reads a shipped config without a command line (`make reproduce`, tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsd.core.schemas import (  # (importing it registers the schemas the stage configs start from)
    BENCHMARK_BLOCKS,
    BenchmarkBlock,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str], stage: str = "generate") -> DictConfig:
    """A stage's config as `python -m pipelines.<stage> <overrides>` builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(stage, overrides=overrides)


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
