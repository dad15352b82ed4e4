"""WSD as a method: its settings from the config, its engine on the backend, its registration."""

from __future__ import annotations

import functools
import logging

from wsd.backends.engines import Engine, backend_identity, model_identity, per_request
from wsd.core.prompts import Message
from wsd.core.registration import Method, MethodEntry, backend_name, engine_options
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.on_hf import FastWSD
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.per_request import PerRequestWSD
from wsd.weak_to_strong.reference import ReferenceWSD, summarize
from wsd.weak_to_strong.switch import WSDBlock, WSDSettings

log = logging.getLogger(__name__)


class WSDMethod:
    """A WSD implementation (`wsd.implementation`: the reference passes, or the backend's fast engine),
    its records completed with the fields every method has."""

    def __init__(self, implementation: FastWSD | ChunkedWSD | ReferenceWSD):
        self.implementation = implementation

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        self.implementation.check_fits(prompt_id, messages)

    def generate_many(self, prompts):
        for prompt, record in self.implementation.generate_many(prompts):
            yield prompt, _completed(record)

    @property
    def answer(self):
        """One prompt's record as a coroutine (a server's request) where the implementation runs
        per request (`PerRequestWSD`); None where it does not."""
        if not isinstance(self.implementation, PerRequestWSD):
            return None

        async def answer(prompt) -> dict:
            return _completed(await self.implementation.answer(prompt))

        return answer

    @property
    def counter(self):
        return getattr(self.implementation, "counter", None)


def _completed(record: dict) -> dict:
    return {**record, "response_tokens": record["keep_count"] + record["continuation_tokens"]}


def wsd_settings(cfg: dict) -> tuple[WSDBlock, WSDSettings, FastOptions]:
    """The `wsd` block (range-checked), the settings the engines read, and the fast engines' options."""
    block, settings = WSDSettings.from_config(cfg)
    g = engine_options(cfg)
    return block, settings, FastOptions(batch_size=g.batch_size, chunk_tokens=g.chunk_tokens,
                                        early_stop=block.early_stop)


def build_wsd(cfg: dict, models: dict[str, Engine]) -> Method:
    """`wsd.implementation=reference`: the three passes (on HF one prompt at a time). `fast`:
    the fastest engine of the backend: on HF one shared KV cache per batch (`FastWSD`); on
    vLLM's blocking engines the three passes over every prompt at once (up to
    `backend.max_in_flight`; measured faster than the chunked path, whose early stop does not
    pay for its extra requests: docs/backends.md), but where drafts are made whole to be shared through the
    draft cache (`wsd.early_stop=false`, a sweep) chunked drafting with prefix-cached scoring
    (`ChunkedWSD`); on vLLM's async engine each prompt its own pipeline (`PerRequestWSD`,
    `backend.scheduling=per_request`)."""
    block, settings, options = wsd_settings(cfg)
    if settings.draft_max_tokens < block.draft_max_tokens:
        _say_draft_lowered(block.draft_max_tokens, settings.target_max_tokens)
    pilot, base = models["pilot"], models["base"]
    vllm = backend_name(cfg) == "vllm"
    three_passes_fastest = vllm and block.early_stop and not per_request(cfg.get("backend"))
    if block.implementation == "reference" or three_passes_fastest:
        return WSDMethod(ReferenceWSD(pilot, base, settings, batch_size=options.batch_size if vllm else 1))
    draft_cache = (DraftCache(cfg["draft_cache_dir"], draft_identity(cfg, settings, options))
                   if cfg.get("draft_cache_dir") else None)
    if per_request(cfg.get("backend")):
        return WSDMethod(PerRequestWSD(pilot, base, settings, options, draft_cache,
                                       max_in_flight=cfg["backend"]["max_in_flight"]))
    fast = ChunkedWSD if vllm else FastWSD
    return WSDMethod(fast(pilot, base, settings, options, draft_cache))


@functools.cache
def _say_draft_lowered(asked: int, answer_budget: int) -> None:
    """Once per (draft budget, answer budget): a server builds WSD for every batch."""
    log.warning("wsd.draft_max_tokens=%d is above the answer's budget generation.max_new_tokens=%d: the pilot "
                "drafts at most %d tokens, the answer's budget", asked, answer_budget, answer_budget)


def draft_identity(cfg: dict, settings: WSDSettings, options: FastOptions) -> dict:
    """What a pilot draft and its base probabilities depend on: both models as run identities
    key them, the backend (each backend's kernels decide near-ties their own way), the draft
    budget, fixed-length decoding, the seed, and the batching (in bf16 the batch's shape
    changes the numbers). Not the switch rule, nor the answer's budget and stop strings, so
    every point of a (window, threshold) sweep shares the entries."""
    backend = backend_identity(cfg.get("backend") or {"name": "hf"})
    identity = {role: model_identity(cfg[role], backend) for role in ("pilot", "base")}
    identity.update(draft_max_tokens=settings.draft_max_tokens, fixed_length=settings.fixed_length,
                    seed=cfg["seed"], batch_size=options.batch_size, chunk_tokens=options.chunk_tokens)
    identity["backend"] = backend
    return identity


METHOD = MethodEntry("wsd", ("pilot", "base"), build_wsd, wsd_settings, settings_blocks=(("wsd", WSDBlock),),
                     uses_wsd_block=True, summary=summarize)
