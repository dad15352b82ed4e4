"""The typed blocks of the stages' configs (`generation`, `wsd`, `tax`, `train`), registered
with Hydra's ConfigStore as the `schema` group that the stage configs start from. A value of
the wrong type fails when the config composes, with the key's full name (OmegaConf's
`full_key`); each block's `validate` holds its range checks, run where the block is read,
before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


def _at_least(key: str, value, low, kind: str = "an integer") -> None:
    if value < low:
        raise ValueError(f"{key} must be {kind} >= {low}, got {value!r}")


@dataclass
class Generation:
    """What every method shares."""

    max_new_tokens: int = 2048
    batch_size: int = 8
    chunk_tokens: int = 16
    fixed_length: bool = False
    stop_strings: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0

    def validate(self, key: str = "generation") -> None:
        for name in ("max_new_tokens", "batch_size", "chunk_tokens"):
            _at_least(f"{key}.{name}", getattr(self, name), 1)
        if not all(self.stop_strings):
            raise ValueError(f"{key}.stop_strings must be non-empty strings, got {list(self.stop_strings)!r}")
        _at_least(f"{key}.temperature", self.temperature, 0, "a number")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{key}.top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def sampling(self) -> tuple[float, float] | None:
        """(temperature, top_p) when it samples; None when greedy (the paper's decoding)."""
        return (float(self.temperature), float(self.top_p)) if self.temperature > 0 else None


@dataclass
class WSD:
    """WSD's own settings (read only by method=wsd)."""

    engine: str = "fast"
    window: int = 6
    threshold: float = 0.8
    draft_max_tokens: int = 512
    early_stop: bool = True

    def validate(self, key: str = "wsd") -> None:
        from wsd.switch import validate_switch_params

        if self.engine not in ("fast", "reference"):
            raise ValueError(f"unknown {key}.engine {self.engine!r}; accepted: fast, reference")
        try:
            validate_switch_params(self.window, self.threshold)
        except ValueError as err:
            raise ValueError(f"{key}.{err}") from None
        _at_least(f"{key}.draft_max_tokens", self.draft_max_tokens, 1)


@dataclass
class Tax:
    """The alignment-tax stage's tasks and their data."""

    tasks: list[str] = field(default_factory=lambda: ["wsd_gsm8k", "wsd_humaneval", "wsd_ifeval"])
    limit: Optional[int] = None
    gsm8k_path: Optional[str] = None
    gsm8k_fewshot_path: Optional[str] = None
    humaneval_timeout: float = 10.0
    max_gen_toks: Optional[int] = None
    include_defaults: bool = False

    def validate(self, key: str = "tax") -> None:
        if not self.tasks:
            raise ValueError(f"{key}.tasks must be a non-empty list of task names")
        for name in ("limit", "max_gen_toks"):
            if getattr(self, name) is not None:
                _at_least(f"{key}.{name}", getattr(self, name), 1, "null or an integer")
        if self.humaneval_timeout <= 0:
            raise ValueError(f"{key}.humaneval_timeout must be a positive number of seconds, got "
                             f"{self.humaneval_timeout!r}")


@dataclass
class Train:
    """A training: ours (the start model, the data, LoRA, the weights' dtype, the held-out
    comparison) and TRL's own arguments, which TRL's config class checks itself
    (`wsd.training.trainer_args`)."""

    algorithm: str = "dpo"
    model: Optional[Any] = None  # a model config node (conf/pilot/*.yaml); null: the experiment's pilot
    dataset: Optional[str] = None
    lora: Optional[dict[str, Any]] = None
    dtype: str = "float32"
    heldout_comparison: bool = True
    trl: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)


SCHEMAS = {"generation": Generation, "wsd": WSD, "tax": Tax, "train": Train}


def register() -> None:
    """`schema/<block>` in Hydra's ConfigStore, for the stage configs' defaults lists
    (`- schema/generation@generation`)."""
    store = ConfigStore.instance()
    for block, schema in SCHEMAS.items():
        store.store(group="schema", name=block, node=schema)

register()
