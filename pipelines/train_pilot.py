"""Pilot training: TRL's DPOTrainer (the paper's choice) or SFTTrainer on GenerAlign data,
full fine-tuning or LoRA, under DeepSpeed ZeRO-2/3 when a config names it. Resumes from the
last checkpoint; saves a plain HF folder the generate stage takes as `pilot=trained`.

    python -m pipelines.train_pilot experiment=mini deepspeed=none     # one process
    make train                                                          # DeepSpeed ZeRO-2, 2 ranks (gloo here)
    accelerate launch --multi_gpu --num_processes 8 -m pipelines.train_pilot deepspeed=zero3   # GPUs (nccl)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import collect_generalign, generate, multirun_flag_first
from wsd.models import ModelSpec, check_available, model_folder
from wsd.store import config_key, slug, write_atomic
from wsd.tracking import tracked, validate_logger

log = logging.getLogger("wsd.train")

COLUMNS = {"dpo": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion")}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def dataset_path(cfg: DictConfig) -> Path:
    """`train.dataset`, or this experiment's GenerAlign collection for the algorithm."""
    if cfg.train.dataset:
        return Path(cfg.train.dataset).expanduser()
    return collect_generalign.collect_dir(cfg) / "dataset" / cfg.train.algorithm


def load_data(cfg: DictConfig):
    """The train/test DatasetDict (a `save_to_disk` folder, or a JSONL file with a `split`
    column), checked for the algorithm's columns (other columns, such as GenerAlign's
    `category`, are kept for the held-out comparison)."""
    import datasets

    algorithm, path = cfg.train.algorithm, dataset_path(cfg)
    if algorithm not in COLUMNS:
        raise ValueError(f"unknown train.algorithm {algorithm!r}; accepted: {', '.join(COLUMNS)}")
    if not path.exists():
        hint = "" if cfg.train.dataset else " (run `python -m pipelines.collect_generalign` with the same overrides)"
        raise FileNotFoundError(f"training data {str(path)!r} does not exist{hint}")
    if path.is_dir():
        data = datasets.load_from_disk(str(path))
        data = data if isinstance(data, datasets.DatasetDict) else datasets.DatasetDict({"train": data})
    else:
        rows = datasets.load_dataset("json", data_files=str(path), split="train")
        splits = set(rows["split"]) if "split" in rows.column_names else {"train"}
        data = datasets.DatasetDict({s: rows.filter(lambda r, s=s: r.get("split", "train") == s) for s in splits})
    if "train" not in data or data["train"].num_rows == 0:
        raise ValueError(f"training data {str(path)!r} has no train rows")
    missing = [c for c in COLUMNS[algorithm] if c not in data["train"].column_names]
    if missing:
        raise ValueError(f"training data {str(path)!r} lacks column(s) {', '.join(missing)} that "
                         f"{algorithm.upper()} needs; found {', '.join(data['train'].column_names)}")
    return datasets.DatasetDict({s: d for s, d in data.items() if d.num_rows})


def deepspeed_config(cfg: DictConfig) -> dict | None:
    """The DeepSpeed JSON of `conf/deepspeed/*.yaml` (null: plain DDP/CPU training); explicit
    batch sizes must divide as DeepSpeed requires."""
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True) if cfg.deepspeed else None
    if not ds or not ds.pop("enabled", True):
        return None
    ds.pop("name", None)
    t = cfg.train
    micro, accumulation = ds.get("train_micro_batch_size_per_gpu", "auto"), ds.get("gradient_accumulation_steps", "auto")
    micro = t.per_device_train_batch_size if micro == "auto" else micro
    accumulation = t.gradient_accumulation_steps if accumulation == "auto" else accumulation
    total = ds.get("train_batch_size", "auto")
    if total != "auto" and total != micro * accumulation * world_size():
        raise ValueError(f"deepspeed train_batch_size {total} must equal micro batch {micro} x gradient accumulation "
                         f"{accumulation} x {world_size()} ranks = {micro * accumulation * world_size()}")
    return ds


def initial_model(cfg: DictConfig) -> DictConfig:
    """The model training starts from: `train.model`, else the experiment's pilot (whose
    judge and teachers made the data either way)."""
    return cfg.train.model or cfg.pilot


# How often it saves and logs, not what it learns. The length (max_steps, num_train_epochs)
# is keyed: it sets the learning-rate schedule, so a longer run is a different model.
_NOT_KEYED = ("save_steps", "save_total_limit", "logging_steps")


def train_dir(cfg: DictConfig) -> Path:
    """Keyed by the pilot, the data, the training (its length included) and DeepSpeed
    settings and the seed."""
    train = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if k not in _NOT_KEYED}
    payload = {"pilot": OmegaConf.to_container(initial_model(cfg), resolve=True), "data": str(dataset_path(cfg)),
               "train": train,
               "deepspeed": OmegaConf.to_container(cfg.deepspeed, resolve=True) if cfg.deepspeed else None,
               "seed": cfg.seed}
    return Path(cfg.output_root) / "pilots" / f"{cfg.name}__{slug(initial_model(cfg).name)}__{config_key(payload)}"


def deepspeed_on_cpu_ranks(ds: dict | None) -> bool:
    """Set up accelerate's state for DeepSpeed ranks on a host without GPUs, before the
    Trainer's arguments: accelerate finds no backend there (it would count one process while
    DeepSpeed runs them all), so the ranks join a gloo group and the Trainer takes that
    state as configured (`use_configured_state`). False where accelerate manages alone."""
    import torch
    from accelerate import PartialState

    if ds is None or "LOCAL_RANK" not in os.environ or torch.cuda.is_available():
        return False
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # what the Trainer sets while it builds the state
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return True


def trainer_args(cfg: DictConfig, out: Path, ds: dict | None, report_to: list[str]):
    import torch
    from trl import DPOConfig, SFTConfig

    t = cfg.train
    configured = deepspeed_on_cpu_ranks(ds)
    use_cpu = not torch.cuda.is_available() if t.use_cpu is None else t.use_cpu
    common = dict(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs, max_steps=t.max_steps, lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps, logging_steps=t.logging_steps, save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, max_length=t.max_length, seed=cfg.seed, data_seed=cfg.seed,
        report_to=report_to, deepspeed=ds, use_cpu=use_cpu and not configured, bf16=t.bf16,
        accelerator_config={"use_configured_state": configured},
        dataloader_num_workers=0, save_only_model=False, disable_tqdm=False,
        eval_strategy="no", per_device_eval_batch_size=t.per_device_train_batch_size,
    )
    if t.algorithm == "dpo":
        return DPOConfig(beta=t.beta, **common)
    return SFTConfig(**common)


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing (its `trainer_state.json` is written
    last): a kill during a save leaves a partial folder, which transformers'
    `get_last_checkpoint` would pick and then refuse to resume from."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    done = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if (p / TRAINER_STATE_NAME).is_file()]
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if done else None


def summarize_history(history: list[dict]) -> dict:
    """First and last values of the training curve (loss, DPO reward margins and accuracies)."""
    keys = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
            "mean_token_accuracy")
    out = {}
    for key in keys:
        values = [h[key] for h in history if key in h]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "points": len(values)}
    return out


def run(cfg: DictConfig) -> dict | None:
    """Check the data, the model and the DeepSpeed batch sizes before any training; resume
    from the last checkpoint; save the final model as a plain HF folder (rank 0)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate_logger(resolved["logger"])
    data = load_data(cfg)
    ds = deepspeed_config(cfg)
    spec = ModelSpec.from_config(initial_model(cfg))
    check_available(spec)
    out = train_dir(cfg)
    rank = int(os.environ.get("RANK", "0"))
    final = out / "model"
    if (final / "config.json").exists() and not cfg.force:
        log.info("already trained: %s (force=true trains again)", final)
        return json.loads((out / "summary.json").read_text())
    out.mkdir(parents=True, exist_ok=True)

    set_seed(cfg.seed)
    folder = model_folder(spec, cfg.model_cache_dir)  # converts a packaged GGUF once (file-locked)
    report_to = ["wandb"] if resolved["logger"]["name"] == "wandb" else []
    args = trainer_args(cfg, out, ds, report_to)  # before the model: ZeRO-3 partitions it as it loads
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, cfg.train.dtype))
    peft_config = None
    if cfg.train.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **OmegaConf.to_container(cfg.train.lora, resolve=True))
    from trl import DPOTrainer, SFTTrainer

    trainer_class = DPOTrainer if cfg.train.algorithm == "dpo" else SFTTrainer
    with tracked(resolved["logger"], stage="train_pilot", group=cfg.name, name=f"train/{out.name}", config=resolved,
                 folder=out, enabled=rank == 0) as tracker:
        columns = list(COLUMNS[cfg.train.algorithm])
        trainer = trainer_class(model=model, args=args, train_dataset=data["train"].select_columns(columns),
                                eval_dataset=data["test"].select_columns(columns) if "test" in data else None,
                                processing_class=tokenizer, peft_config=peft_config)
        last = last_complete_checkpoint(Path(args.output_dir))
        if last:
            log.info("resuming from %s", last)
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last)
        wall = time.perf_counter() - started
        metrics = trainer.evaluate() if "test" in data else {}
        history = trainer.state.log_history
        tmp = out / ".model.tmp"
        if trainer.is_world_process_zero() and tmp.exists():
            shutil.rmtree(tmp)
        trainer.save_model(str(tmp))  # every rank joins (ZeRO-3 gathers the weights)
        summary = None
        if trainer.is_world_process_zero():
            if cfg.train.lora:
                _merge_lora(tmp, folder, cfg.train.dtype)
            tokenizer.save_pretrained(str(tmp))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            latest = Path(cfg.output_root) / "pilots" / cfg.name
            latest.mkdir(parents=True, exist_ok=True)
            link = latest / "model"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(final.resolve(), target_is_directory=True)
            summary = {"algorithm": cfg.train.algorithm, "pilot": spec.name, "data": str(dataset_path(cfg)),
                       "train_rows": data["train"].num_rows, "test_rows": data["test"].num_rows if "test" in data else 0,
                       "deepspeed": ds, "world_size": world_size(),
                       "distributed_type": str(trainer.accelerator.distributed_type), "resumed_from": last,
                       "global_steps": trainer.state.global_step, "train_seconds": wall,
                       "train_metrics": result.metrics, "eval_metrics": metrics,
                       "curve": summarize_history(history), "model": str(final), "latest": str(link)}
            if cfg.train.heldout_comparison and "test" in data:
                leave_process_group()
                summary["heldout"] = compare_on_heldout(resolved, spec, final, data["test"])
            write_atomic(out / "log_history.json", json.dumps(history, indent=1))
            write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str))
            tracker.summary({f"curve/{k}/{e}": v for k, d in summary["curve"].items() for e, v in d.items()}
                            | {f"heldout/{k}": v["mean"] for k, v in summary.get("heldout", {}).items()
                               if isinstance(v, dict)})
    return summary


def leave_process_group() -> None:
    """Training is over: rank 0 leaves the ranks' process group before it answers the held-out
    prompts, since an in-process vLLM engine started inside that group would make its own
    groups in it, waiting for ranks that have finished (forever)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def compare_on_heldout(resolved: dict, pilot: ModelSpec, trained: Path, test) -> dict:
    """The untrained and the trained pilot answer the held-out prompts (greedy, as long as
    GenerAlign's answers), and GenerAlign's own scorers judge them together: each pilot's mean
    score, and the trained pilot's round-robin win rate against the untrained one."""
    from eval.stats import bootstrap, print_estimates
    from pipelines.collect_generalign import Scorer
    from wsd.benchmarks import Prompt
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


def _merge_lora(adapter_dir: Path, base_folder: str, dtype: str) -> None:
    """A LoRA pilot is saved merged into its base, so the generate stage loads a plain model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    for f in adapter_dir.iterdir():
        f.unlink() if f.is_file() else shutil.rmtree(f)
    merged.save_pretrained(str(adapter_dir))


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
