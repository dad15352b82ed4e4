"""Generation methods: WSD and the paper's baselines behind one small interface.

A method is anything with `check_fits(prompt_id, messages)` (raises before any decoding if a
prompt cannot fit) and `generate_many(prompts)`, which yields `(prompt, record)` in input
order; every record has `response`, `response_tokens`, `stop_reason` and `seconds.total`.
`METHODS` maps a `conf/method/*.yaml` name to the models it needs and a builder, so a new
method (best-of-n, ARGS...) is one builder and one config file. Builders get engines
(`wsd.backends.engines.Engine`) by role, on whichever backend the config names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from wsd.backends.decoding import WSDSettings, check_context, encode
from wsd.backends.engines import Engine, model_identity
from wsd.backends.models import ModelSpec, check_available
from wsd.backends.reward import RewardSettings, reward_scale
from wsd.baselines.aligner import RELEASED, Aligner
from wsd.baselines.args import ARGS, ARGSSettings
from wsd.baselines.best_of_n import BestOfN
from wsd.baselines.cards import CARDS, CARDSSettings
from wsd.baselines.nudging import Nudging
from wsd.baselines.nudging import summarize as summarize_handovers
from wsd.core.prompts import (
    Message,
    base_format,
    cut_at_stop,
    load_urial_prefix,
    pilot_prompt,
    stop_reason,
    stop_strings,
)
from wsd.core.schemas import GenerationBlock, WSDBlock, method_block
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.reference import ReferenceWSD
from wsd.weak_to_strong.reference import summarize as summarize_switches

log = logging.getLogger(__name__)


class Method(Protocol):
    def check_fits(self, prompt_id: str, messages: list[Message]) -> None: ...

    def generate_many(self, prompts) -> Iterator[tuple[object, dict]]: ...


class PromptedModel:
    """One model decoding from a rendered prompt, in batches (greedily unless the options
    sample): the `base`, `urial` and `pilot` baselines."""

    def __init__(self, engine: Engine, render: Callable[[list[Message]], str], stop_kind: str,
                 options: GenerationBlock, finish: Callable[[str], str] = lambda text: text):
        """`stop_kind`: which format's stop strings end its answers (see `stop_strings`)."""
        self.engine, self.render, self.options, self.finish = engine, render, options, finish
        self.stops = stop_strings(stop_kind, engine.tokenizer, options.stop_strings, options.fixed_length)

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        prompt_tokens = len(encode(self.engine.tokenizer, self.render(messages)))
        check_context(self.engine, prompt_id, prompt_tokens, self.options.max_new_tokens, "new")

    def generate_many(self, prompts):
        size, tok = self.options.batch_size, self.engine.tokenizer
        for start in range(0, len(prompts), size):
            batch = prompts[start : start + size]
            began = time.perf_counter()
            ids = [encode(tok, self.render(p.messages)) for p in batch]
            generated = self.engine.generate(ids, [self.options.max_new_tokens] * len(batch), self.stops,
                                             self.options.fixed_length, sampling=self.options.sampling)
            share = (time.perf_counter() - began) / len(batch)
            for prompt, prompt_ids, g in zip(batch, ids, generated):
                text, cut = cut_at_stop(tok.decode(g.ids, skip_special_tokens=True), self.stops)
                yield prompt, {
                    "response": self.finish(text),
                    "response_tokens": len(g.ids),
                    "stop_reason": stop_reason(g.stop_reason, cut),
                    "prompt_tokens": len(prompt_ids),
                    "seconds": {"total": share},
                    "model": self.engine.name,
                    "batch_size": len(batch),
                    "batch": batch[0].id,  # prompts of one batch share its time
                }


class WSDMethod:
    """A WSD implementation (`wsd.engine`: the reference passes, or the backend's fast engine),
    its records completed with the fields every method has."""

    def __init__(self, implementation: FastWSD | ChunkedWSD | ReferenceWSD):
        self.implementation = implementation

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        self.implementation.check_fits(prompt_id, messages)

    def generate_many(self, prompts):
        for prompt, record in self.implementation.generate_many(prompts):
            yield prompt, {**record, "response_tokens": record["keep_count"] + record["continuation_tokens"]}

    @property
    def counter(self):
        return getattr(self.implementation, "counter", None)


# ---------------------------------------------------------------------------------------
# Builders: (resolved config as a dict, engines by role) -> Method


def decode_options(cfg: dict) -> GenerationBlock:
    """The `generation` block, range-checked."""
    options = GenerationBlock(**cfg["generation"])
    options.validate()
    return options


def backend_name(cfg: dict) -> str:
    """`backend=hf|vllm` (a config without the group, as older saved configs, is HF)."""
    return (cfg.get("backend") or {}).get("name", "hf")


def greedy_options(cfg: dict) -> GenerationBlock:
    """The options of a method that decodes greedily only (WSD's switch and nudging's
    handovers are defined on greedy decoding)."""
    options = decode_options(cfg)
    if options.sampling:
        raise ValueError(f"method {cfg['method']['name']!r} decodes greedily; generation.temperature must be 0, "
                         f"got {options.temperature}")
    return options


def wsd_settings(cfg: dict) -> tuple[str, WSDSettings, FastOptions]:
    """The `wsd` block, range-checked, as the engine, the switch rule and budgets, and the
    fast engine's options."""
    w, g = WSDBlock(**cfg["wsd"]), greedy_options(cfg)
    w.validate()
    settings = WSDSettings(window=w.window, threshold=w.threshold, draft_max_tokens=min(w.draft_max_tokens, g.max_new_tokens),
                           target_max_tokens=g.max_new_tokens, fixed_length=g.fixed_length,
                           answer_stops=tuple(g.stop_strings))
    options = FastOptions(batch_size=g.batch_size, chunk_tokens=g.chunk_tokens, early_stop=w.early_stop)
    return w.engine, settings, options


def build_wsd(cfg: dict, models: dict[str, Engine]) -> Method:
    """`wsd.engine=reference`: the three passes (on HF one prompt at a time). `fast`: the
    fastest engine of the backend: on HF one shared KV cache per batch (`FastWSD`), on vLLM
    chunked drafting with prefix-cached scoring (`ChunkedWSD`)."""
    engine, settings, options = wsd_settings(cfg)
    if settings.draft_max_tokens < cfg["wsd"]["draft_max_tokens"]:
        log.warning("wsd.draft_max_tokens=%d is above the answer's budget generation.max_new_tokens=%d: the pilot "
                    "drafts at most %d tokens, the answer's budget", cfg["wsd"]["draft_max_tokens"],
                    settings.target_max_tokens, settings.draft_max_tokens)
    pilot, base = models["pilot"], models["base"]
    vllm = backend_name(cfg) == "vllm"
    if engine == "reference":
        return WSDMethod(ReferenceWSD(pilot, base, settings, batch_size=options.batch_size if vllm else 1))
    draft_cache = DraftCache(cfg["draft_cache_dir"], draft_identity(cfg)) if cfg.get("draft_cache_dir") else None
    fast = ChunkedWSD if vllm else FastWSD
    return WSDMethod(fast(pilot, base, settings, options, draft_cache))


def draft_identity(cfg: dict) -> dict:
    """What a pilot draft and its base probabilities depend on: both models as run identities
    key them, the backend (each backend's kernels decide near-ties their own way), the draft
    budget, fixed-length decoding, the seed, and the batching (in bf16 the batch's shape
    changes the numbers). Not the switch rule, nor the answer's budget and stop strings, so
    every point of a (window, threshold) sweep shares the entries."""
    backend = dict(cfg.get("backend") or {"name": "hf"})
    w, g = WSDBlock(**cfg["wsd"]), GenerationBlock(**cfg["generation"])
    identity = {role: model_identity(cfg[role], backend) for role in ("pilot", "base")}
    identity.update(draft_max_tokens=min(w.draft_max_tokens, g.max_new_tokens), fixed_length=g.fixed_length,
                    seed=cfg["seed"], batch_size=g.batch_size, chunk_tokens=g.chunk_tokens)
    identity["backend"] = backend
    return identity


def prompted_base(cfg: dict, base: Engine, prompt: str, options: GenerationBlock | None = None) -> PromptedModel:
    fmt = base_format(base.tokenizer, prompt, cfg["method"].get("prompt_file"))
    return PromptedModel(base, fmt.render, fmt.stop_kind, options or decode_options(cfg), finish=fmt.finish)


def build_base(cfg: dict, models: dict[str, Engine]) -> Method:
    """The base model alone, zero-shot, in the plain role-tagged format WSD hands over in."""
    return prompted_base(cfg, models["base"], "base")


def build_urial(cfg: dict, models: dict[str, Engine]) -> Method:
    """The base model with URIAL's in-context alignment prefix (ours by default)."""
    return prompted_base(cfg, models["base"], "urial")


def build_pilot(cfg: dict, models: dict[str, Engine]) -> Method:
    """The pilot alone, with its chat template."""
    pilot = models["pilot"]
    return PromptedModel(pilot, lambda messages: pilot_prompt(pilot.tokenizer, messages), "pilot",
                         decode_options(cfg))


def build_nudging(cfg: dict, models: dict[str, Engine]) -> Method:
    options, params = greedy_options(cfg), cfg["method"]
    return Nudging(models["pilot"], models["base"], options.max_new_tokens, options.fixed_length,
                   threshold=params["threshold"], word_max_tokens=params["word_max_tokens"],
                   answer_stops=options.stop_strings)


def args_settings(cfg: dict) -> ARGSSettings:
    greedy_options(cfg)
    m = method_block(cfg["method"])
    base_format_name(cfg["method"])
    return ARGSSettings(k=m.k, weight=m.weight)


def cards_settings(cfg: dict, reward: RewardSettings | None = None) -> CARDSSettings:
    decode_options(cfg)
    method_block(cfg["method"])
    m = dict(cfg["method"])
    base_format_name(m)
    if m["reward_target"] == "auto":
        settings = reward or RewardSettings.from_config(cfg["reward_model"])
        settings.check()
        m["reward_target"] = reward_scale(settings.path)["target"]
    return CARDSSettings(**{k: m[k] for k in CARDSSettings.__dataclass_fields__})


def base_format_name(method: dict) -> str:
    """How the base is prompted (`method.prompt`), its URIAL prefix file checked."""
    load_urial_prefix(method.get("prompt_file"))
    return method.get("prompt", "base")


def _base_parts(cfg: dict, base: Engine):
    options, m = decode_options(cfg), cfg["method"]
    fmt = base_format(base.tokenizer, base_format_name(m), m.get("prompt_file"))
    return options, fmt, stop_strings(fmt.stop_kind, base.tokenizer, options.stop_strings, options.fixed_length)


def build_args(cfg: dict, models: dict) -> Method:
    options, fmt, stops = _base_parts(cfg, models["base"])
    return ARGS(models["base"], models["reward"], args_settings(cfg), fmt, stops, options.max_new_tokens,
                options.batch_size)


def build_cards(cfg: dict, models: dict) -> Method:
    options, fmt, stops = _base_parts(cfg, models["base"])
    settings = cards_settings(cfg, models["reward"].settings)
    return CARDS(models["base"], models["reward"], settings, fmt, stops, options.max_new_tokens, cfg["seed"])


def source_config(cfg: dict) -> dict:
    """The config of the method a wrapper (best-of-N, Aligner) takes its answers from."""
    return {**cfg, "method": {"name": cfg["method"]["source"], "prompt_file": cfg["method"].get("prompt_file")}}


SAMPLED_SOURCES = ("base", "urial", "pilot")  # the methods that sample (WSD's switch is greedy)


def best_of_n_source(cfg: dict) -> dict:
    """The source method's config: its name, sampling as `method.temperature`/`top_p` ask."""
    m = cfg["method"]
    if m["source"] not in SAMPLED_SOURCES:
        raise ValueError(f"method.source must be one of {', '.join(SAMPLED_SOURCES)} (methods that sample), "
                         f"got {m['source']!r}")
    method_block(m)
    source = {**source_config(cfg),
              "generation": {**cfg["generation"], "temperature": m["temperature"], "top_p": m["top_p"]}}
    decode_options(source)
    return source


def build_best_of_n(cfg: dict, models: dict) -> Method:
    source = best_of_n_source(cfg)
    method = METHODS[source["method"]["name"]].build(source, models)
    return BestOfN(method, models["reward"], cfg["method"]["n"], cfg["seed"], decode_options(cfg).batch_size)


def aligner_check(cfg: dict) -> None:
    """Before anything loads: the source answers greedily, and a corrector must be at hand
    (the embedded default has none)."""
    m = cfg["method"]
    if m["source"] not in ("base", "urial", "pilot", "wsd"):
        raise ValueError(f"method.source must be base, urial, pilot or wsd, got {m['source']!r}")
    METHODS[m["source"]].check(source_config(cfg))
    corrector = ModelSpec.from_config(cfg["corrector"])
    try:
        check_available(corrector)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"method aligner is unavailable: its corrector model is not here ({error}). "
                                f"The embedded default ships none; pass corrector.path={RELEASED} with Hub "
                                "access, or a local Aligner checkpoint") from None


def build_aligner(cfg: dict, models: dict) -> Method:
    source = source_config(cfg)
    options = decode_options(cfg)
    corrector = models["corrector"]
    stops = stop_strings("pilot", corrector.tokenizer, (), options.fixed_length) + ["USER:"]
    return Aligner(METHODS[source["method"]["name"]].build(source, models), corrector, options.max_new_tokens,
                   options.batch_size, stops)


@dataclass(frozen=True)
class MethodEntry:
    roles: tuple[str, ...]  # the models it loads: "pilot", "base", "corrector"
    build: Callable[[dict, dict], Method]
    check: Callable[[dict], object]  # validates the config in milliseconds, before models load
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


METHODS = {
    "wsd": MethodEntry(("pilot", "base"), build_wsd, wsd_settings, uses_wsd_block=True,
                       summary=summarize_switches),
    "base": MethodEntry(("base",), build_base, decode_options),
    "urial": MethodEntry(("base",), build_urial,
                         lambda cfg: (decode_options(cfg), load_urial_prefix(cfg["method"].get("prompt_file")))),
    "pilot": MethodEntry(("pilot",), build_pilot, decode_options),
    "nudging": MethodEntry(("pilot", "base"), build_nudging,
                           lambda cfg: (greedy_options(cfg), method_block(cfg["method"])),
                           summary=summarize_handovers),
    "args": MethodEntry(("base",), build_args, args_settings, reward=True, label_keys=("k", "weight")),
    "cards": MethodEntry(("base",), build_cards, cards_settings, reward=True, backends=("hf",),
                         label_keys=("reward_target",)),
    "best_of_n": MethodEntry((), build_best_of_n, best_of_n_source, reward=True, source_roles=True,
                             label_keys=("source", "n")),
    "aligner": MethodEntry(("corrector",), build_aligner, aligner_check, source_roles=True),
}


def effective_backend(cfg) -> dict:
    """The backend block the method runs on: the configured one where the method can run
    there, else HF (the stage says so in its log, and the run is keyed by it)."""
    backend = dict(cfg.get("backend") or {"name": "hf"})
    return backend if backend["name"] in method_entry(cfg["method"]["name"]).backends else {"name": "hf"}


def method_entry(name: str) -> MethodEntry:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; accepted: {', '.join(sorted(METHODS))}")
    return METHODS[name]
