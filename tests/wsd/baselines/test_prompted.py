"""How many prompts a one-request method hands its engine per call, and one request's record."""

import asyncio

from omegaconf import OmegaConf

from wsd.baselines.prompted import PromptedModel, request_options
from wsd.core.prompts import base_prompt
from wsd.core.schemas import GenerationBlock
from wsd.data.prompt_sets import Prompt
from wsd.methods import compose


def test_per_request_scheduling_hands_vllm_every_prompt_in_flight():
    def batch(*overrides):
        return request_options(OmegaConf.to_container(compose(["method=base", *overrides]), resolve=True)).batch_size

    assert batch() == batch("backend=vllm") == 8  # generation.batch_size
    assert batch("backend=vllm", "backend.scheduling=per_request", "backend.max_in_flight=100") == 100


class _AsyncGenerating:
    """An HF engine behind the async engine's one-request `agenerate`."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def agenerate(self, ids, budget, stops, fixed_length=False, sampling=None, seed=None):
        [generated] = self.engine.generate([ids], [budget], stops, fixed_length, sampling=sampling)
        return generated


def test_one_request_answers_as_the_batch_writes_it(tiny_pair):
    """A server's request on the async engine (`answer`) gets the record a batch of one gets."""
    _, base = tiny_pair
    prompt = Prompt("q", [{"role": "user", "content": "Name a colour."}])

    def model(engine):
        return PromptedModel(engine, lambda m: base_prompt(m, base.tokenizer.bos_token), "base",
                             GenerationBlock(max_new_tokens=12))

    [(_, batched)] = list(model(base).generate_many([prompt]))
    alone = asyncio.run(model(_AsyncGenerating(base)).answer(prompt))
    fields = ("response", "response_tokens", "stop_reason", "prompt_tokens", "model")
    assert [alone[f] for f in fields] == [batched[f] for f in fields] and alone["response_tokens"] > 0
