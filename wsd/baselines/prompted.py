"""One model decoding from a rendered prompt: the `base`, `urial` and `pilot` baselines, and
the base-model prompt formats the reward-guided methods share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from wsd.backends.decoding import check_context, encode
from wsd.backends.engines import Engine
from wsd.core.prompts import (
    Message,
    base_format,
    cut_at_stop,
    load_urial_prefix,
    pilot_prompt,
    stop_reason,
    stop_strings,
)
from wsd.core.registration import Method, MethodEntry, decode_options, engine_options
from wsd.core.schemas import GenerationBlock, MethodBlock


@dataclass
class URIALBlock(MethodBlock):
    name: str = "urial"
    prompt_file: Optional[str] = None  # a URIAL prefix file (null: ours)


def check_prompt(key: str, prompt: str) -> None:
    """How a reward-guided method prompts the base: zero-shot (`base`) or with URIAL's prefix."""
    if prompt not in ("base", "urial"):
        raise ValueError(f"{key}.prompt must be base or urial, got {prompt!r}")


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
                yield prompt, self._record(prompt_ids, g, share, len(batch), batch[0].id)

    async def answer(self, prompt) -> dict:
        """One prompt as a request of its own on vLLM's async engine (a server's request, which
        its client's leaving cancels, aborting the request in the engine)."""
        began = time.perf_counter()
        ids = encode(self.engine.tokenizer, self.render(prompt.messages))
        generated = await self.engine.agenerate(ids, self.options.max_new_tokens, self.stops,
                                                self.options.fixed_length, sampling=self.options.sampling)
        return self._record(ids, generated, time.perf_counter() - began, 1, prompt.id)

    def _record(self, prompt_ids: list[int], generated, seconds: float, batch_size: int, batch: str) -> dict:
        text, cut = cut_at_stop(self.engine.tokenizer.decode(generated.ids, skip_special_tokens=True), self.stops)
        return {
            "response": self.finish(text),
            "response_tokens": len(generated.ids),
            "stop_reason": stop_reason(generated.stop_reason, cut),
            "prompt_tokens": len(prompt_ids),
            "seconds": {"total": seconds},
            "model": self.engine.name,
            "batch_size": batch_size,
            "batch": batch,  # prompts of one batch share its time
        }


def prompted_base(cfg: dict, base: Engine, prompt: str, options: GenerationBlock | None = None) -> PromptedModel:
    fmt = base_format(base.tokenizer, prompt, cfg["method"].get("prompt_file"))
    return PromptedModel(base, fmt.render, fmt.stop_kind, options or engine_options(cfg), finish=fmt.finish)


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
                         engine_options(cfg))


def base_format_name(method: dict) -> str:
    """How the base is prompted (`method.prompt`), its URIAL prefix file checked."""
    load_urial_prefix(method.get("prompt_file"))
    return method.get("prompt", "base")


def base_parts(cfg: dict, base: Engine):
    options, m = decode_options(cfg), cfg["method"]
    fmt = base_format(base.tokenizer, base_format_name(m), m.get("prompt_file"))
    return options, fmt, stop_strings(fmt.stop_kind, base.tokenizer, options.stop_strings, options.fixed_length)


METHODS = (
    MethodEntry("base", ("base",), build_base, decode_options),
    MethodEntry("urial", ("base",), build_urial,
                lambda cfg: (decode_options(cfg), load_urial_prefix(cfg["method"].get("prompt_file"))), block=URIALBlock),
    MethodEntry("pilot", ("pilot",), build_pilot, decode_options),
)
