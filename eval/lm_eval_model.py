"""WSD and its baselines as an lm-eval model (`wsd`), so lm-eval's own tasks and runner
measure the alignment tax of any method of the generate stage.

`generate_until` runs the method exactly as the generate stage does (the request's context
is the user turn; the pilot reads it with its chat template, the base in the plain role-tagged
format), with lm-eval's `until` added to every model's stop strings and `max_gen_toks` as the
response budget. Log-likelihood requests have no WSD analogue: they are answered by the
method's scoring model (the base model when the method uses one, else the pilot) through
lm-eval's own model for its backend (`HFLM`, or `VLLM` on the engine already running), and
`loglikelihood_model` says which.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from wsd.backends.engines import Engine, HFEngine
from wsd.data.prompt_sets import Prompt
from wsd.methods import method_entry

log = logging.getLogger("wsd.lm_eval")


@register_model("wsd")
class MethodLM(LM):
    """One method (`cfg.method.name`) of a resolved generate config over its engines."""

    def __init__(self, cfg: dict, models: dict[str, Engine], on_record: Callable[[dict], None] | None = None):
        super().__init__()
        self.cfg, self.models, self.on_record = cfg, models, on_record
        self.method_name = cfg["method"]["name"]
        self.entry = method_entry(self.method_name)
        self._scorer = None

    @property
    def loglikelihood_model(self) -> Engine:
        return self.models["base"] if "base" in self.models else self.models["pilot"]

    def _method(self, until: tuple[str, ...], max_gen_toks: int):
        """The method with the request's stops and budget (WSD drafts no further than it)."""
        generation = {**self.cfg["generation"], "max_new_tokens": max_gen_toks, "stop_strings": list(until)}
        return self.entry.build({**self.cfg, "generation": generation}, self.models)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by (`until`, `max_gen_toks`), each group decoded in the method's
        batches; every answer goes to lm-eval's cache hook at once, so a killed run resumes."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            _, kwargs = request.args
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0:
                log.warning("%s decodes greedily, as the paper does; ignoring sampling settings %s",
                            self.method_name, {k: kwargs.get(k) for k in ("do_sample", "temperature")})
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            budget = int(kwargs.get("max_gen_toks") or self.cfg["generation"]["max_new_tokens"])
            groups[(until, budget)].append(i)
        answers: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=f"{self.method_name} generate_until", disable=disable_tqdm) as bar:
            for (until, budget), indices in groups.items():
                method = self._method(until, budget)
                prompts = [Prompt(f"request-{i}", [{"role": "user", "content": requests[i].args[0]}]) for i in indices]
                for prompt in prompts:
                    method.check_fits(prompt.id, prompt.messages)
                for prompt, record in method.generate_many(prompts):
                    i = int(prompt.id.removeprefix("request-"))
                    answers[i] = record["response"]
                    self.cache_hook.add_partial("generate_until", requests[i].args, record["response"])
                    if self.on_record:
                        self.on_record({"context": requests[i].args[0], "until": list(until), "max_gen_toks": budget,
                                        **record})
                    bar.update()
        return answers

    def _scoring_lm(self):
        if self._scorer is None:
            scorer, batch = self.loglikelihood_model, self.cfg["generation"]["batch_size"]
            if isinstance(scorer, HFEngine):
                from lm_eval.models.huggingface import HFLM

                self._scorer = HFLM(pretrained=scorer.model, tokenizer=scorer.tokenizer, batch_size=batch)
            else:
                self._scorer = _lm_eval_vllm(scorer, batch)
        return self._scorer

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._scoring_lm().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._scoring_lm().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)


def _lm_eval_vllm(engine, batch_size: int):
    """lm-eval's `VLLM` model over our running engine: lm-eval builds its own `LLM` from a
    path, which would load the same weights into a second engine, so its constructor is
    handed ours instead."""
    from unittest import mock

    from wsd.backends.vllm_engine import vllm_version_lookup

    with vllm_version_lookup():  # lm-eval looks vLLM up by its distribution name
        from lm_eval.models import vllm_causallms
    llm = engine.llm
    with mock.patch.object(vllm_causallms, "LLM", lambda **_: llm):
        return vllm_causallms.VLLM(pretrained=engine.folder, dtype=engine.spec.dtype, batch_size=batch_size,
                                   max_model_len=llm.llm_engine.model_config.max_model_len,
                                   trust_remote_code=engine.spec.trust_remote_code)
