"""WSD as a method: its settings from the config, its engine on the backend, its registration."""

from __future__ import annotations

import logging

from wsd.backends.decoding import WSDSettings
from wsd.backends.engines import Engine, model_identity
from wsd.core.prompts import Message
from wsd.core.registration import Method, MethodEntry, backend_name, greedy_options
from wsd.core.schemas import WSDBlock
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.reference import ReferenceWSD, summarize

log = logging.getLogger(__name__)


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
    draft_cache = (DraftCache(cfg["draft_cache_dir"], draft_identity(cfg, settings, options))
                   if cfg.get("draft_cache_dir") else None)
    fast = ChunkedWSD if vllm else FastWSD
    return WSDMethod(fast(pilot, base, settings, options, draft_cache))


def draft_identity(cfg: dict, settings: WSDSettings, options: FastOptions) -> dict:
    """What a pilot draft and its base probabilities depend on: both models as run identities
    key them, the backend (each backend's kernels decide near-ties their own way), the draft
    budget, fixed-length decoding, the seed, and the batching (in bf16 the batch's shape
    changes the numbers). Not the switch rule, nor the answer's budget and stop strings, so
    every point of a (window, threshold) sweep shares the entries."""
    backend = dict(cfg.get("backend") or {"name": "hf"})
    identity = {role: model_identity(cfg[role], backend) for role in ("pilot", "base")}
    identity.update(draft_max_tokens=settings.draft_max_tokens, fixed_length=settings.fixed_length,
                    seed=cfg["seed"], batch_size=options.batch_size, chunk_tokens=options.chunk_tokens)
    identity["backend"] = backend
    return identity


METHOD = MethodEntry("wsd", ("pilot", "base"), build_wsd, wsd_settings, uses_wsd_block=True, summary=summarize)
