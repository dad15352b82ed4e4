"""One request's record on the async engine."""

import asyncio

from wsd.baselines.prompted import PromptedModel
from wsd.core.prompts import base_prompt
from wsd.core.schemas import GenerationBlock
from wsd.data.prompt_sets import Prompt


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
