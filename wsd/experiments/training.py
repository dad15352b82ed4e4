"""Fine-tuning with TRL under DeepSpeed, shared by the pilot (DPO, SFT) and the reward model
(TRL's `RewardTrainer`): the data check, the DeepSpeed batch arithmetic, CPU ranks, resuming
from the last complete checkpoint, and a final plain HF folder that later stages load by path.

A training run lives in `out`: `checkpoints/` (resumable), `model/` (the result, written
under a temporary name and renamed, so a kill never leaves half a model), `summary.json`, and
a `latest/model` link that configs such as `pilot=trained` point at.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsd.backends.models import ModelSpec, check_available, model_folder
from wsd.core.store import umask_modes, write_atomic
from wsd.runs.identity import Identity
from wsd.runs.tracking import tracked, validate_logger

log = logging.getLogger("wsd.train")


@dataclass(frozen=True)
class Algorithm:
    """What differs between the trainings: the columns each row needs, the model head, TRL's
    config and trainer, PEFT's task type, and the training curve's keys worth summarizing."""

    columns: tuple[str, ...]
    head: str  # "causal_lm" or "reward" (a sequence classifier with one output)
    trainer: str  # the name of TRL's trainer and (with Trainer -> Config) its config class
    peft_task: str
    curve_keys: tuple[str, ...]

    def classes(self):
        import trl

        return getattr(trl, self.trainer.replace("Trainer", "Config")), getattr(trl, self.trainer)


ALGORITHMS = {
    "dpo": Algorithm(("prompt", "chosen", "rejected"), "causal_lm", "DPOTrainer", "CAUSAL_LM",
                     ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")),
    "sft": Algorithm(("prompt", "completion"), "causal_lm", "SFTTrainer", "CAUSAL_LM", ("loss", "mean_token_accuracy")),
    "reward": Algorithm(("prompt", "chosen", "rejected"), "reward", "RewardTrainer", "SEQ_CLS",
                        ("loss", "accuracy", "margin")),
}


def algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown train.algorithm {name!r}; accepted: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_data(cfg: DictConfig):
    """The training's train/test DatasetDict (`wsd.runs.identity.dataset_path`: a `save_to_disk`
    folder, or a JSONL file with a `split` column), checked for the algorithm's columns
    (other columns, such as GenerAlign's `category`, are kept for the held-out comparison)."""
    import datasets

    from wsd.runs.identity import dataset_path

    name, path = cfg.train.algorithm, dataset_path(cfg)
    hint = "" if cfg.train.dataset else " (run `python -m pipelines.collect_generalign` with the same overrides)"
    columns = algorithm(name).columns
    if not path.exists():
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
    missing = [c for c in columns if c not in data["train"].column_names]
    if missing:
        raise ValueError(f"training data {str(path)!r} lacks column(s) {', '.join(missing)} that "
                         f"{name} training needs; found {', '.join(data['train'].column_names)}")
    return datasets.DatasetDict({s: d for s, d in data.items() if d.num_rows})


def deepspeed_config(cfg: DictConfig) -> dict | None:
    """The DeepSpeed JSON of `conf/deepspeed/*.yaml` (null: plain DDP/CPU training); explicit
    batch sizes must divide as DeepSpeed requires."""
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True) if cfg.deepspeed else None
    if not ds or not ds.pop("enabled", True):
        return None
    ds.pop("name", None)
    t = trl_arguments(OmegaConf.to_container(cfg.train, resolve=True))
    micro, accumulation = ds.get("train_micro_batch_size_per_gpu", "auto"), ds.get("gradient_accumulation_steps", "auto")
    micro = t.get("per_device_train_batch_size", 8) if micro == "auto" else micro
    accumulation = t.get("gradient_accumulation_steps", 1) if accumulation == "auto" else accumulation
    total = ds.get("train_batch_size", "auto")
    if total != "auto" and total != micro * accumulation * world_size():
        raise ValueError(f"deepspeed train_batch_size {total} must equal micro batch {micro} x gradient accumulation "
                         f"{accumulation} x {world_size()} ranks = {micro * accumulation * world_size()}")
    return ds


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


# What the stage sets in TRL's config itself (from `seed`, `deepspeed=`, `logger=`, the folder)
SET_BY_THE_STAGE = ("output_dir", "seed", "data_seed", "report_to", "deepspeed", "accelerator_config")


def trl_arguments(train: dict) -> dict:
    """TRL's own arguments as the train block gives them: `train.trl`, and for the algorithm
    its own block (`train.dpo`: `beta`, `loss_type`, ...)."""
    args = {**(train.get("trl") or {}), **(train.get(train["algorithm"]) or {})}
    taken = [k for k in SET_BY_THE_STAGE if k in args]
    if taken:
        raise ValueError(f"train.trl sets {', '.join(taken)}, which the stage sets itself (seed=, deepspeed=, "
                         "logger= and the output folder)")
    return args


def trainer_args(cfg: DictConfig, out: Path, ds: dict | None, report_to: list[str]):
    """TRL's config for the algorithm (DPOConfig, SFTConfig or RewardConfig) from `train.trl`
    and the algorithm's block, passed through as they are: TRL's dataclass rejects a name it
    does not have. The stage adds the folder, seeds, DeepSpeed and the CPU ranks' state."""
    import torch

    train = OmegaConf.to_container(cfg.train, resolve=True)
    config_class, _ = algorithm(train["algorithm"]).classes()
    args = {"dataloader_num_workers": 0, "save_only_model": False, "disable_tqdm": False, "eval_strategy": "no",
            **trl_arguments(train)}
    args.setdefault("per_device_eval_batch_size", args.get("per_device_train_batch_size", 8))
    configured = deepspeed_on_cpu_ranks(ds)
    use_cpu = not torch.cuda.is_available() if args.get("use_cpu") is None else args["use_cpu"]
    args["use_cpu"] = use_cpu and not configured
    try:
        return config_class(output_dir=str(out / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed,
                            report_to=report_to, deepspeed=ds, accelerator_config={"use_configured_state": configured},
                            **args)
    except TypeError as err:  # a name TRL's config does not have
        raise ValueError(f"train.trl / train.{train['algorithm']}: {err} (TRL's {config_class.__name__} takes "
                         "the names its documentation lists)") from err


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing (its `trainer_state.json` is written
    last): a kill during a save leaves a partial folder, which transformers'
    `get_last_checkpoint` would pick and then refuse to resume from."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    done = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if (p / TRAINER_STATE_NAME).is_file()]
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if done else None


def summarize_history(history: list[dict], keys: tuple[str, ...]) -> dict:
    """First and last values of the training curve (the loss, DPO's reward margins, the
    reward model's pair accuracy)."""
    out = {}
    for key in keys:
        values = [h[key] for h in history if key in h]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "points": len(values)}
    return out


def load_for_training(folder: str, head: str, dtype: str):
    """The tokenizer (with a pad token) and the model with the algorithm's head: a reward
    model is the start model with a fresh one-output classification head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if head == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=getattr(torch, dtype))
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    return tokenizer, model


def initial_model(cfg: DictConfig, folder: str):
    """The model as training starts from it, seeded (a reward model's fresh head is random),
    so that it can be rebuilt after training to compare with."""
    from transformers import set_seed

    set_seed(cfg.seed)
    return load_for_training(folder, algorithm(cfg.train.algorithm).head, cfg.train.dtype)


def leave_process_group() -> None:
    """Training is over: rank 0 leaves the ranks' process group before anything else runs in
    it, since an in-process vLLM engine started inside that group would make its own groups
    in it, waiting for ranks that have finished (forever)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train(cfg: DictConfig, spec: ModelSpec, data, identity: Identity, latest: Path, stage: str,
          after: Callable[[dict, Path], None] | None = None) -> dict | None:
    """Train `spec` on `data` (checked) into the identity's folder `out`, resuming from its last checkpoint; rank 0
    writes `out/model`, links `latest/model` to it, calls `after(summary, model)` (the held-out
    comparisons, outside the ranks' process group and DeepSpeed's model loading) and writes the
    summary. Returns the summary (None on other ranks); an existing model is kept unless `force`."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate_logger(resolved["logger"])
    kind = algorithm(cfg.train.algorithm)
    ds = deepspeed_config(cfg)
    check_available(spec)
    rank = int(os.environ.get("RANK", "0"))
    out = identity.folder
    final = out / "model"
    if (final / "config.json").exists() and not cfg.force:
        log.info("already trained: %s (force=true trains again)", final)
        return json.loads((out / "summary.json").read_text())
    identity.claim()
    if rank == 0:
        write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    folder = model_folder(spec, cfg.model_cache_dir)  # converts a packaged GGUF once (file-locked)
    report_to = ["wandb"] if resolved["logger"]["name"] == "wandb" else []
    args = trainer_args(cfg, out, ds, report_to)  # before the model: ZeRO-3 partitions it as it loads
    tokenizer, model = initial_model(cfg, folder)
    peft_config = None
    if cfg.train.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type=kind.peft_task, **OmegaConf.to_container(cfg.train.lora, resolve=True))
    _, trainer_class = kind.classes()
    with tracked(resolved["logger"], stage=stage, group=cfg.name, name=f"{stage}/{out.name}", config=resolved,
                 folder=out, enabled=rank == 0) as tracker:
        columns = list(kind.columns)
        test = data["test"].select_columns(columns) if "test" in data else None
        trainer = trainer_class(model=model, args=args, train_dataset=data["train"].select_columns(columns),
                                eval_dataset=test, processing_class=tokenizer, peft_config=peft_config)
        last = last_complete_checkpoint(Path(args.output_dir))
        if last:
            log.info("resuming from %s", last)
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last)
        wall = time.perf_counter() - started
        metrics = trainer.evaluate() if test is not None else {}
        history = trainer.state.log_history
        tmp = out / ".model.tmp"
        if trainer.is_world_process_zero() and tmp.exists():
            shutil.rmtree(tmp)
        trainer.save_model(str(tmp))  # every rank joins (ZeRO-3 gathers the weights)
        if not trainer.is_world_process_zero():
            return None
        if cfg.train.lora:
            merge_lora(tmp, folder, cfg.train.dtype, kind.head)
        tokenizer.save_pretrained(str(tmp))
        umask_modes(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        latest.mkdir(parents=True, exist_ok=True)
        link = latest / "model"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(final.resolve(), target_is_directory=True)
        summary = {"algorithm": cfg.train.algorithm, "start_model": spec.name, "identity": identity.record(),
                   "train_rows": data["train"].num_rows, "test_rows": data["test"].num_rows if "test" in data else 0,
                   "deepspeed": ds, "world_size": world_size(),
                   "distributed_type": str(trainer.accelerator.distributed_type), "resumed_from": last,
                   "global_steps": trainer.state.global_step, "train_seconds": wall,
                   "train_metrics": result.metrics, "eval_metrics": metrics,
                   "curve": summarize_history(history, kind.curve_keys), "model": str(final), "latest": str(link)}
        if after is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            leave_process_group()
            unset_hf_deepspeed_config()  # later loads are plain (ZeRO-3 would partition them)
            after(summary, final)
        write_atomic(out / "log_history.json", json.dumps(history, indent=1))
        write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str))
        tracker.summary({f"curve/{k}/{e}": v for k, d in summary["curve"].items() for e, v in d.items()}
                        | {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return summary


def merge_lora(adapter_dir: Path, base_folder: str, dtype: str, head: str) -> None:
    """A LoRA model is saved merged into its start model, so later stages load a plain one."""
    from peft import PeftModel

    _, start = load_for_training(base_folder, head, dtype)
    merged = PeftModel.from_pretrained(start, str(adapter_dir)).merge_and_unload()
    for f in adapter_dir.iterdir():
        f.unlink() if f.is_file() else shutil.rmtree(f)
    merged.save_pretrained(str(adapter_dir))
