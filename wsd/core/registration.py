"""What a method registers (`MethodEntry`), the registry, and what every builder reads of a
config. A method is anything with `check_fits(prompt_id, messages)` (raises before any
decoding if a prompt cannot fit) and `generate_many(prompts)`, which yields `(prompt, record)`
in input order; every record has `response`, `response_tokens`, `stop_reason` and
`seconds.total`. Each method's module declares its `METHOD` (builder, check, roles, its
config block, label keys, summary); `wsd.methods` registers them all."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from wsd.core.prompts import Message
from wsd.core.schemas import GenerationBlock, MethodBlock, register_schema


class Method(Protocol):
    def check_fits(self, prompt_id: str, messages: list[Message]) -> None: ...

    def generate_many(self, prompts) -> Iterator[tuple[object, dict]]: ...


def decode_options(cfg: dict) -> GenerationBlock:
    """The `generation` block, range-checked."""
    options = GenerationBlock(**cfg["generation"])
    options.validate()
    return options


def engine_options(cfg: dict) -> GenerationBlock:
    """The decoding options, with the prompts a method hands its engine per call: on vLLM up
    to `backend.max_in_flight` (its scheduler batches what fits and queues the rest, so a
    method never waits for a batch of `generation.batch_size` to finish before the next
    starts), on HF `generation.batch_size` (bounded by memory). A vLLM block saved before
    `max_in_flight` existed batches as its run did then."""
    options = decode_options(cfg)
    if backend_name(cfg) == "vllm":
        return dataclasses.replace(options, batch_size=cfg["backend"].get("max_in_flight", options.batch_size))
    return options


def backend_name(cfg: dict) -> str:
    """`backend=hf|vllm` (a config without the group, as older saved configs, is HF)."""
    return (cfg.get("backend") or {}).get("name", "hf")


def greedy_options(cfg: dict) -> GenerationBlock:
    """The options of a method that decodes greedily only (WSD's switch and nudging's
    handovers are defined on greedy decoding), with the engine's batch (`engine_options`)."""
    options = engine_options(cfg)
    if options.sampling:
        raise ValueError(f"method {cfg['method']['name']!r} decodes greedily; generation.temperature must be 0, "
                         f"got {options.temperature}")
    return options


def source_config(cfg: dict) -> dict:
    """The config of the method a wrapper (best-of-N, Aligner) takes its answers from."""
    return {**cfg, "method": {"name": cfg["method"]["source"], "prompt_file": cfg["method"].get("prompt_file")}}


@dataclass(frozen=True)
class MethodEntry:
    """A method's registration: its `conf/method/<name>.yaml` name, the models it loads, how
    it is built and checked, and what tables and summaries say of its runs."""

    name: str
    roles: tuple[str, ...]  # the models it loads: "pilot", "base", "corrector"
    build: Callable[[dict, dict], Method]
    check: Callable[[dict], object]  # validates the config in milliseconds, before models load
    block: type = MethodBlock  # its `method` block (`conf/method/<name>.yaml` starts from it)
    settings_blocks: tuple[tuple[str, type], ...] = ()  # top-level blocks of its own (WSD: `wsd`)
    uses_wsd_block: bool = False  # whether the `wsd` settings change its results
    reward: bool = False  # whether it loads `reward_model` too (as models["reward"])
    source_roles: bool = False  # its roles are those of `method.source` (plus its own)
    # where it can run; on another backend it runs on HF (CARDS reads the base's whole
    # next-token distribution, its entropy, at every step: vLLM returns the top few)
    backends: tuple[str, ...] = ("hf", "vllm")
    label_keys: tuple[str, ...] = ()  # the settings a table row names a run by (what a grid varies)
    summary: Callable[[list[dict]], dict] = lambda records: {}  # its own statistics of a run's records

    def roles_for(self, cfg) -> tuple[str, ...]:
        if not self.source_roles:
            return self.roles
        source = METHODS[cfg["method"]["source"]] if cfg["method"]["source"] in METHODS else None
        return tuple(dict.fromkeys((*(source.roles if source else ()), *self.roles)))


METHODS: dict[str, MethodEntry] = {}  # filled by `wsd.methods`, which imports every method's module


def register(*entries: MethodEntry) -> None:
    """Each method by its name, and its blocks as the schemas its configs start from."""
    for entry in entries:
        METHODS[entry.name] = entry
        register_schema(f"method/{entry.name}", entry.block)
        for path, block in entry.settings_blocks:
            register_schema(path, block)


def effective_backend(cfg) -> dict:
    """The backend block the method runs on: the configured one where the method can run
    there, else HF (the stage says so in its log, and the run is keyed by it)."""
    backend = dict(cfg.get("backend") or {"name": "hf"})
    return backend if backend["name"] in method_entry(cfg["method"]["name"]).backends else {"name": "hf"}


def method_entry(name: str) -> MethodEntry:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; accepted: {', '.join(sorted(METHODS))}")
    return METHODS[name]
