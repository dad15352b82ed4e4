"""Pilot training: TRL's DPOTrainer (the paper's choice) or SFTTrainer on GenerAlign data,
full fine-tuning or LoRA, under DeepSpeed ZeRO-2/3 when a config names it. Resumes from the
last checkpoint; saves a plain HF folder the generate stage takes as `pilot=trained`.

    python -m pipelines.train_pilot experiment=mini deepspeed=none     # one process
    make train                                                          # DeepSpeed ZeRO-2, 2 ranks (gloo here)
    accelerate launch --multi_gpu --num_processes 8 -m pipelines.train_pilot deepspeed=zero3   # GPUs (nccl)
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import collect_generalign, generate, multirun_flag_first
from wsd import training
from wsd.models import ModelSpec
from wsd.store import config_key, slug

def dataset_path(cfg: DictConfig) -> Path:
    """`train.dataset`, or this experiment's GenerAlign collection for the algorithm (the
    reward model trains on the DPO pairs)."""
    if cfg.train.dataset:
        return Path(cfg.train.dataset).expanduser()
    pairs = "dpo" if cfg.train.algorithm == "reward" else cfg.train.algorithm
    return collect_generalign.collect_dir(cfg) / "dataset" / pairs


def load_data(cfg: DictConfig):
    hint = "" if cfg.train.dataset else " (run `python -m pipelines.collect_generalign` with the same overrides)"
    return training.load_data(cfg.train.algorithm, dataset_path(cfg), hint)


def initial_model(cfg: DictConfig) -> DictConfig:
    """The model training starts from: `train.model`, else the experiment's pilot (whose
    judge and teachers made the data either way)."""
    return cfg.train.model or cfg.pilot


def train_dir(cfg: DictConfig, root: str = "pilots") -> Path:
    """Keyed by the start model, the data, the training (its length included) and DeepSpeed
    settings and the seed."""
    payload = {"pilot": OmegaConf.to_container(initial_model(cfg), resolve=True), "data": str(dataset_path(cfg)),
               "train": training.keyed_train_block(cfg),
               "deepspeed": OmegaConf.to_container(cfg.deepspeed, resolve=True) if cfg.deepspeed else None,
               "seed": cfg.seed}
    return Path(cfg.output_root) / root / f"{cfg.name}__{slug(initial_model(cfg).name)}__{config_key(payload)}"


def run(cfg: DictConfig) -> dict | None:
    """Check the algorithm, the data, the model and the DeepSpeed batch sizes before any
    training; resume from the last checkpoint; save the final model as a plain HF folder
    (rank 0), then compare it with the untrained pilot on the held-out prompts."""
    if cfg.train.algorithm not in ("dpo", "sft"):
        raise ValueError(f"train.algorithm={cfg.train.algorithm!r} does not train a pilot; accepted: dpo, sft "
                         "(a reward model: python -m pipelines.train_reward)")
    data = load_data(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    spec = ModelSpec.from_config(initial_model(cfg))

    def heldout(summary: dict, model: Path) -> None:
        summary.update(pilot=spec.name, data=str(dataset_path(cfg)))
        if cfg.train.heldout_comparison and "test" in data:
            summary["heldout"] = compare_on_heldout(resolved, spec, model, data["test"])

    return training.train(cfg, spec, data, train_dir(cfg), Path(cfg.output_root) / "pilots" / cfg.name,
                          "train_pilot", after=heldout)


def compare_on_heldout(resolved: dict, pilot: ModelSpec, trained: Path, test) -> dict:
    """The untrained and the trained pilot answer the held-out prompts (greedy, as long as
    GenerAlign's answers), and GenerAlign's own scorers judge them together: each pilot's mean
    score, and the trained pilot's round-robin win rate against the untrained one."""
    from eval.stats import bootstrap, print_estimates
    from pipelines.collect_generalign import Scorer
    from wsd.prompt_sets import Prompt
    from wsd.generalign import SourcePrompt
    from wsd.methods import method_entry

    g = resolved["generalign"]
    config = {**resolved, "method": {**resolved["method"], "name": "pilot"},
              "generation": {**resolved["generation"], "max_new_tokens": g["max_new_tokens"],
                             "temperature": 0.0}}

    def user_text(prompt) -> str:  # TRL's conversational or plain prompt
        return prompt if isinstance(prompt, str) else next(m["content"] for m in prompt if m["role"] == "user")

    prompts = [SourcePrompt(str(r.get("id", k)), r.get("category") or "helpful", r.get("source") or "test",
                            user_text(r["prompt"])) for k, r in enumerate(test)]
    batch = [Prompt(str(k), [{"role": "user", "content": p.prompt}]) for k, p in enumerate(prompts)]
    candidates = [[] for _ in prompts]
    pilots = {"untrained": pilot, "trained": ModelSpec.from_config({"name": "trained-pilot", "path": str(trained)})}
    for label, spec in pilots.items():
        method = method_entry("pilot").build(config, generate.pooled_models({"pilot": spec}, config))
        for prompt, record in method.generate_many(batch):
            candidates[int(prompt.id)].append({"teacher": label, "response": record["response"].strip()})
    Scorer(g["scorers"]).score(prompts, candidates)
    result = {"prompts": len(prompts), "max_new_tokens": g["max_new_tokens"]}
    for i, label in enumerate(pilots):
        result[f"{label}_score"] = bootstrap([c[i]["score"] for c in candidates]).as_dict()
    for key in (Scorer.key(s) for s in g["scorers"] if s["metric"] == "round_robin"):
        won = [c[1]["scores"][key] for c in candidates if key in c[1].get("scores", {})]
        result["trained_win_rate"] = bootstrap(won).as_dict() if won else None
    print_estimates("held-out prompts: trained vs untrained pilot", {k: v for k, v in result.items() if isinstance(v, dict)})
    return result


def compose(overrides: list[str]) -> DictConfig:
    """This stage's config as `python -m pipelines.train_pilot <overrides>` builds it."""
    return generate.compose(overrides, config_name="train_pilot")


@hydra.main(config_path="../conf", config_name="train_pilot", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("model", "global_steps", "train_seconds", "curve")}, indent=1))


if __name__ == "__main__":
    multirun_flag_first()
    main()
