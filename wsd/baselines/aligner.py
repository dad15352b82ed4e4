"""Aligner (Ji et al., 2024): a corrector model rewrites another model's answer given the
question. The prompt is the one the released `aligner/aligner-7b-v1.0` was trained with (the
authors' code of that release); the corrector decodes greedily and its output is the answer.

The embedded default ships no corrector, so offline the method is unavailable: the check
names the model to pass, before anything loads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from wsd.backends.decoding import check_context, encode
from wsd.backends.models import ModelSpec, check_available
from wsd.core.prompts import cut_at_stop, stop_reason, stop_strings
from wsd.core.registration import Method, MethodEntry, decode_options, method_entry, source_config
from wsd.core.schemas import MethodBlock


@dataclass
class AlignerBlock(MethodBlock):
    name: str = "aligner"
    source: str = "base"  # the method whose answers the corrector rewrites
    prompt_file: Optional[str] = None


ALIGNER_PROMPT = ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful "
                  "and harmless: {question} | {answer} ASSISTANT:")
RELEASED = "aligner/aligner-7b-v1.0"


def aligner_prompt(question: str, answer: str) -> str:
    return ALIGNER_PROMPT.format(question=question, answer=answer)


def question_of(messages) -> str:
    """The question an answer is corrected for: the last user turn (the format has one)."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


class Aligner:
    """`source` (a method) answers; the corrector rewrites each answer, in batches."""

    def __init__(self, source, corrector, max_new_tokens: int, batch_size: int, stops: list[str]):
        self.source, self.corrector = source, corrector
        self.max_new_tokens, self.batch_size, self.stops = max_new_tokens, batch_size, stops

    def check_fits(self, prompt_id, messages) -> None:
        self.source.check_fits(prompt_id, messages)

    def generate_many(self, prompts):
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            drafts = [record for _, record in self.source.generate_many(batch)]
            began = time.perf_counter()
            tok = self.corrector.tokenizer
            bos = tok.bos_token or ""
            ids = [encode(tok, bos + aligner_prompt(question_of(p.messages), d["response"]))
                   for p, d in zip(batch, drafts)]
            for p, i in zip(batch, ids):
                check_context(self.corrector, p.id, len(i), self.max_new_tokens, "new")
            corrected = self.corrector.generate(ids, [self.max_new_tokens] * len(batch), self.stops)
            share = (time.perf_counter() - began) / len(batch)
            for prompt, draft, g in zip(batch, drafts, corrected):
                text, cut = cut_at_stop(tok.decode(g.ids, skip_special_tokens=True), self.stops)
                yield prompt, {
                    "response": text.strip(),
                    "response_tokens": len(g.ids),
                    "stop_reason": stop_reason(g.stop_reason, cut),
                    "original_response": draft["response"],
                    "original_tokens": draft["response_tokens"],
                    "seconds": {"total": draft["seconds"]["total"] + share, "correction": share},
                    "model": draft.get("model"),
                    "corrector": self.corrector.name,
                }


def aligner_check(cfg: dict) -> None:
    """Before anything loads: the source answers greedily, and a corrector must be at hand
    (the embedded default has none)."""
    m = cfg["method"]
    if m["source"] not in ("base", "urial", "pilot", "wsd"):
        raise ValueError(f"method.source must be base, urial, pilot or wsd, got {m['source']!r}")
    method_entry(m["source"]).check(source_config(cfg))
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
    return Aligner(method_entry(source["method"]["name"]).build(source, models), corrector, options.max_new_tokens,
                   options.batch_size, stops)


METHOD = MethodEntry("aligner", ("corrector",), build_aligner, aligner_check, block=AlignerBlock, source_roles=True)
