"""Concurrent requests decoded together: the requests that arrive while a batch decodes wait
in a queue and go to the method as the next batch, grouped by their decoding options, so a
server with many clients keeps its engine busy with batches instead of one prompt at a time.
With `workers` > 1 (vLLM's async engine, whose requests from any thread meet in one
scheduler) the next batch starts while others run, so requests reach the engine as they come.
A request whose client left before its batch started is dropped; one that cannot fit the
context gets its own error and the rest of its batch is answered."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from wsd.api import Answer, Generator
from wsd.core.prompts import Message

log = logging.getLogger(__name__)


@dataclass
class Pending:
    messages: list[Message]
    options: tuple[tuple[str, object], ...]  # decoding options, as a key: a batch shares them
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Feeds one `Generator` from many coroutines. Model work runs on `workers` threads (1 for
    transformers models, which are shared and not thread-safe); the event loop keeps accepting
    requests meanwhile."""

    def __init__(self, generator: Generator, max_batch: int, wait_s: float, workers: int = 1):
        self.generator, self.max_batch, self.wait_s = generator, max_batch, wait_s
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsd-decode")
        self.workers = workers
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.workers)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.worker.shutdown(wait=True)

    async def answer(self, messages: list[Message], **options) -> Answer:
        """This request's answer once its batch is decoded; a `ValueError` where it cannot fit."""
        pending = Pending(messages, tuple(sorted(options.items())), asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.future  # cancelled with its client: the batch leaves it out

    async def _serve(self) -> None:
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(self.wait_s)  # let the requests arriving together join it
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            groups: dict[tuple, list[Pending]] = {}
            for pending in batch:
                if not pending.future.done():  # its client is still waiting
                    groups.setdefault(pending.options, []).append(pending)
            for options, group in groups.items():
                await self._slots.acquire()  # with one worker: the next batch forms while this one decodes
                task = asyncio.get_running_loop().create_task(self._decode(group, dict(options)))
                task.add_done_callback(lambda _: self._slots.release())

    async def _decode(self, group: list[Pending], options: dict) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.worker, lambda: self.generator.answer_each([p.messages for p in group], **options))
        except Exception as err:  # the whole batch failed: every client hears why, the server goes on
            log.exception("a batch of %d requests failed", len(group))
            results = [err] * len(group)
        for pending, result in zip(group, results):
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
