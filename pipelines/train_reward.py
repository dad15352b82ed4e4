"""Reward-model training: TRL's RewardTrainer (a Bradley-Terry loss on preference pairs) on
GenerAlign's DPO pairs, from the experiment's pilot with a one-output head unless
`train.model` names another start model; the same launcher, DeepSpeed configs and resume as
pilot training, in `wsd.runs.identity.training`'s folder under `outputs/reward_models/`. Held-out
pair accuracy and margin before and after training go into the summary; the result is
`reward_model=trained` for the reward-guided methods (ARGS, CARDS, best-of-N).

    python -m pipelines.train_reward experiment=mini deepspeed=none      # one process
    make train-reward                                                     # DeepSpeed ZeRO-2, 2 ranks
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines import multirun_flag_first
from wsd.backends.models import ModelSpec, model_folder
from wsd.backends.reward import RewardModel, RewardSettings, pair_accuracy, pair_rewards, write_reward_scale
from wsd.experiments import training
from wsd.runs import identity as identities


def run(cfg: DictConfig) -> dict | None:
    if cfg.train.algorithm != "reward":
        raise ValueError(f"train.algorithm must be 'reward' for a reward model, got {cfg.train.algorithm!r}")
    data = training.load_data(cfg)
    spec = ModelSpec.from_config(identities.initial_model(cfg))

    def describe(summary: dict, model: Path) -> None:
        """The held-out pairs (the train pairs where there is no test split) as the methods
        will read them: pair accuracy and mean margin of the initial and the trained model,
        and the trained model's reward scale, written beside it for CARDS."""
        pairs = data["test"] if "test" in data else data["train"]
        start = model_folder(spec, cfg.model_cache_dir)
        initial = RewardModel(RewardSettings(path=start), loaded=training.initial_model(cfg, start))
        before = pair_accuracy(*pair_rewards(initial, pairs))
        del initial
        after_rewards = pair_rewards(RewardModel(RewardSettings(path=str(model))), pairs)
        after = pair_accuracy(*after_rewards)
        summary.update(data=str(identities.dataset_path(cfg)), heldout={
            "split": "test" if "test" in data else "train", "pairs": pairs.num_rows,
            **{k: {"before": before[k], "after": after[k]} for k in ("accuracy", "margin")}})
        summary["reward_scale"] = write_reward_scale(model, *after_rewards)

    return training.train(cfg, spec, data, identities.training(cfg, root="reward_models"),
                          Path(cfg.output_root) / "reward_models" / cfg.name, "train_reward", after=describe)


@hydra.main(config_path="../conf", config_name="train_reward", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("model", "global_steps", "train_seconds", "heldout")},
                         indent=1))


if __name__ == "__main__":
    multirun_flag_first()
    main()
