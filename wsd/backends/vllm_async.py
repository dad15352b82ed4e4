"""vLLM's async engine (`backend.scheduling=per_request`): one `AsyncLLM` per model, every
request submitted as soon as its caller has it, so vLLM's scheduler batches the live requests
of every prompt together and no prompt waits for another's phase.

The engines live on one event loop in a daemon thread of this process (`engine_loop`), which
the sync stage and an async server both feed: coroutines go in with `engine_loop().submit`.
`AsyncVLLMEngine` keeps the `Engine` protocol of `VLLMEngine` (a call's rows go in together
and are gathered, for the methods written against it) and adds one-request coroutines
(`agenerate`, `ascore`) for per-request pipelines (`wsd.weak_to_strong.per_request`).
`AsyncLLM` always runs its engine core in a process of its own (`backend.in_process` does not
apply to it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
from concurrent.futures import Future

from wsd.backends.decoding import Generated
from wsd.backends.vllm_engine import (
    VLLMEngine,
    _generated,
    cache_covers,
    exit_cleanly_on_sigterm,
    probed,
    prompt_logprobs,
    row_seeds,
)

log = logging.getLogger(__name__)

class EngineLoop:
    """One asyncio loop, run forever in a daemon thread, for this process's async engines."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="wsd-vllm-loop", daemon=True).start()

    def submit(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine):
        """Run `coroutine` on the loop and wait for its result (from another thread)."""
        return self.submit(coroutine).result()


_LOOP: EngineLoop | None = None
_LOOP_LOCK = threading.Lock()


def engine_loop() -> EngineLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = EngineLoop()
        return _LOOP


class AsyncVLLMEngine(VLLMEngine):
    """One model on vLLM's `AsyncLLM`, started on first use."""

    _ids = itertools.count()

    @property
    def llm(self):
        """The `AsyncLLM`, started on first use (on the engine loop; not from a coroutine there,
        which awaits `astart` instead)."""
        self.start()
        return self._llm

    def start(self) -> None:
        if self._llm is None:
            exit_cleanly_on_sigterm()
            engine_loop().call(self.astart())

    async def astart(self) -> None:
        """`start`, from a coroutine on the engine loop."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self._llm is None:
            args = self.engine_args()
            log.info("starting vLLM async engine for %s (%s)", self.name, args)
            self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args, disable_log_stats=True))

    @property
    def cache_block(self) -> int | None:
        if not self.settings.enable_prefix_caching:
            return None
        return self.llm.vllm_config.cache_config.block_size

    def _stop(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            engine_loop().call(_shutdown(llm))

    def close(self) -> None:
        self._stop()

    def unfinished(self) -> int:
        """Requests the engine still holds (0 once every caller has its answer or has left)."""
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    def reset_prefix_cache(self) -> None:
        if self._llm is not None:
            engine_loop().call(self._llm.reset_prefix_cache())

    async def request(self, ids: list[int], params):
        """One request's final output. Cancelled (its caller gone), it is aborted in the engine."""
        from vllm.inputs import TokensPrompt

        await self.astart()
        final = None
        async for output in self._llm.generate(TokensPrompt(prompt_token_ids=list(ids)), params,
                                            f"{self.name}-{next(self._ids)}"):
            final = output
        return final

    def _run(self, prompts: list[list[int]], params: list) -> list:
        """The `Engine` protocol's calls: every row submitted at once, gathered in order."""
        if not prompts:
            return []

        async def gathered():
            return await asyncio.gather(*(self.request(p, q) for p, q in zip(prompts, params)))

        return engine_loop().call(gathered())

    async def agenerate(self, ids: list[int], budget: int, stops, fixed_length: bool = False,
                        sampling=None, seed=None) -> Generated:
        """One row of `generate`, as a request of its own."""
        if budget <= 0:
            return Generated([], "length")
        if sampling and seed is None:
            [seed] = row_seeds(1)
        self.requests["generate"] += 1
        output = await self.request(ids, self.generate_params(budget, stops, fixed_length, sampling, seed))
        return _generated(output.outputs[0], set(self._eos), fixed_length)

    async def aprobe(self, ids: list[int], max_tokens: int, min_prob: float = 0.0) -> tuple[list[int], list[float]]:
        """One `probe`, as a request of its own."""
        self.requests["generate"] += 1
        return probed(await self.request(ids, self.probe_params(max_tokens)))

    async def ascore(self, ids: list[int], start: int) -> list[float]:
        """One row of `score`: P(ids[j] | ids[:j]) for j >= start, read past the cached prefix
        (scored again without the cache where the cache reaches a wanted position)."""
        if start < 1:
            raise ValueError("the first token of a sequence has no probability to score")
        if len(ids) <= start:
            return []
        reuse = self.settings.enable_prefix_caching
        self.requests["score"] += 1
        output = await self.request(ids, self.score_params(read_cache=reuse))
        if reuse and cache_covers(output, start):
            self.requests["score_recomputed"] += 1
            output = await self.request(ids, self.score_params(read_cache=False))
        return [math.exp(lp.logprob) for lp in prompt_logprobs(output, ids, start)]


def answers_in_flight(prompts: list, answer, max_in_flight: int):
    """(prompt, result of the coroutine `answer(prompt)`) in input order, every prompt's coroutine
    submitted to the engine loop at once, at most `max_in_flight` of them running. When the
    consumer stops reading or one fails, the others are cancelled: their requests leave the engines."""
    loop = engine_loop()
    limit = loop.call(_semaphore(max_in_flight))

    async def bounded(prompt):
        async with limit:
            return await answer(prompt)

    running = [loop.submit(bounded(prompt)) for prompt in prompts]
    try:
        for prompt, future in zip(prompts, running):
            yield prompt, future.result()
    finally:
        for future in running:
            future.cancel()


async def on_engine_loop(coroutine):
    """Awaits `coroutine` on the engine loop from another event loop (a server's). Cancelled
    here (its client gone), it is cancelled there and its engine requests are aborted."""
    return await asyncio.wrap_future(engine_loop().submit(coroutine))


async def _semaphore(size: int) -> asyncio.Semaphore:
    """A semaphore made on the engine loop (it belongs to the loop that makes it)."""
    return asyncio.Semaphore(size)


async def _shutdown(llm) -> None:
    """On the engine loop, where its output handler runs: the handler is cancelled before the
    engine core stops, instead of reading from a core that died under it."""
    llm.shutdown()
