"""Pilot training: TRL's DPOTrainer (the paper's choice) or SFTTrainer on GenerAlign data,
full fine-tuning or LoRA, under DeepSpeed ZeRO-2/3 when a config names it, in
`wsd.runs.identity.training`'s folder (`outputs/pilots/<experiment>__<model>__<key>`; its input is
`train.dataset` or the experiment's collection). Resumes from the last checkpoint; saves a
plain HF folder the generate stage takes as `pilot=trained`.

    python -m pipelines.train_pilot experiment=mini deepspeed=none     # one process
    make train                                                          # DeepSpeed ZeRO-2, 2 ranks (gloo here)
    accelerate launch --multi_gpu --num_processes 8 -m pipelines.train_pilot deepspeed=zero3   # GPUs (nccl)
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import multirun_flag_first
from wsd.backends.engines import ModelPool
from wsd.backends.models import ModelSpec
from wsd.experiments import training
from wsd.experiments.generalign import compare_on_heldout
from wsd.runs import identity as identities


def run(cfg: DictConfig, pool: ModelPool | None = None) -> dict | None:
    """Check the algorithm, the data, the model and the DeepSpeed batch sizes before any
    training; resume from the last checkpoint; save the final model as a plain HF folder
    (rank 0), then compare it with the untrained pilot on the held-out prompts."""
    if cfg.train.algorithm not in ("dpo", "sft"):
        raise ValueError(f"train.algorithm={cfg.train.algorithm!r} does not train a pilot; accepted: dpo, sft "
                         "(a reward model: python -m pipelines.train_reward)")
    data = training.load_data(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    spec = ModelSpec.from_config(identities.initial_model(cfg))

    def heldout(summary: dict, model: Path) -> None:
        summary.update(pilot=spec.name, data=str(identities.dataset_path(cfg)))
        if cfg.train.heldout_comparison and "test" in data:
            summary["heldout"] = compare_on_heldout(resolved, spec, model, data["test"],
                                                    ModelPool() if pool is None else pool)

    return training.train(cfg, spec, data, identities.training(cfg), Path(cfg.output_root) / "pilots" / cfg.name,
                          "train_pilot", after=heldout)


@hydra.main(config_path="../conf", config_name="train_pilot", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("model", "global_steps", "train_seconds", "curve")}, indent=1))


if __name__ == "__main__":
    multirun_flag_first()
    main()
