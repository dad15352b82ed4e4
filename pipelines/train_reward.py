"""Reward-model training: TRL's RewardTrainer (a Bradley-Terry loss on preference pairs) on
GenerAlign's DPO pairs, from the experiment's pilot with a one-output head unless
`train.model` names another start model; the same launcher, DeepSpeed configs and resume as
pilot training. Held-out pair accuracy and margin before and after training go into the summary; the
result is `reward_model=trained` for the reward-guided methods (ARGS, CARDS, best-of-N).

    python -m pipelines.train_reward experiment=mini deepspeed=none      # one process
    make train-reward                                                     # DeepSpeed ZeRO-2, 2 ranks
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines import generate, multirun_flag_first, train_pilot
from wsd import training
from wsd.models import ModelSpec, model_folder
from wsd.reward import RewardModel, RewardSettings, write_reward_scale


def train_dir(cfg: DictConfig) -> Path:
    return train_pilot.train_dir(cfg, root="reward_models")


def as_chat(prompt, answer) -> tuple[list[dict], str]:
    """A pair's side in TRL's conversational or plain format, as (messages, answer)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return messages, answer if isinstance(answer, str) else answer[-1]["content"]


def pair_rewards(reward: RewardModel, pairs) -> tuple[list[float], list[float]]:
    def side(key: str) -> list[float]:
        return reward.rewards([reward.text(*as_chat(r["prompt"], r[key])) for r in pairs])

    return side("chosen"), side("rejected")


def accuracy(chosen: list[float], rejected: list[float]) -> float:
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def margin(chosen: list[float], rejected: list[float]) -> float:
    return sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)


def run(cfg: DictConfig) -> dict | None:
    if cfg.train.algorithm != "reward":
        raise ValueError(f"train.algorithm must be 'reward' for a reward model, got {cfg.train.algorithm!r}")
    data = train_pilot.load_data(cfg)
    spec = ModelSpec.from_config(train_pilot.initial_model(cfg))

    def describe(summary: dict, model: Path) -> None:
        """The held-out pairs (the train pairs where there is no test split) as the methods
        will read them: pair accuracy and mean margin of the initial and the trained model,
        and the trained model's reward scale, written beside it for CARDS."""
        pairs = data["test"] if "test" in data else data["train"]
        start = model_folder(spec, cfg.model_cache_dir)
        initial = RewardModel(RewardSettings(path=start), loaded=training.initial_model(cfg, start))
        before = pair_rewards(initial, pairs)
        del initial
        after = pair_rewards(RewardModel(RewardSettings(path=str(model))), pairs)
        summary.update(data=str(train_pilot.dataset_path(cfg)), heldout={
            "split": "test" if "test" in data else "train", "pairs": pairs.num_rows,
            "accuracy": {"before": accuracy(*before), "after": accuracy(*after)},
            "margin": {"before": margin(*before), "after": margin(*after)}})
        summary["reward_scale"] = write_reward_scale(model, *after)

    return training.train(cfg, spec, data, train_dir(cfg), Path(cfg.output_root) / "reward_models" / cfg.name,
                          "train_reward", after=describe)


def compose(overrides: list[str]) -> DictConfig:
    """This stage's config as `python -m pipelines.train_reward <overrides>` builds it."""
    return generate.compose(overrides, config_name="train_reward")


@hydra.main(config_path="../conf", config_name="train_reward", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("model", "global_steps", "train_seconds", "heldout")},
                         indent=1))


if __name__ == "__main__":
    multirun_flag_first()
    main()
