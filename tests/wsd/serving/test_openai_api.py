"""The served model on the tiny models: OpenAI's client gets the generate stage's answers, in
any order and concurrency, streamed or not; bad requests get OpenAI's errors and the server
keeps serving. The server runs in this process on 127.0.0.1, on a free port, and stops."""

import asyncio
import json
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import wsd
from pipelines import generate
from tests.conftest import compose, tiny_overrides
from wsd.serving.batcher import MicroBatcher
from wsd.serving.in_thread import InThread
from wsd.serving.openai_api import create_app

QUESTIONS = ["What is the capital of France?", "How do I bake a cake?", "Tell me a fact.", "Name a colour."]
SETTINGS = {"window": 2, "threshold": 0.3, "draft_max_tokens": 12}
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def pool():
    from wsd.backends.engines import ModelPool

    return ModelPool()


@pytest.fixture(scope="module")
def generator(tiny_models, tmp_path_factory, pool):
    return wsd.WeakToStrong(pilot=tiny_models["pilot"], base=tiny_models["base"], pool=pool,
                            model_cache_dir=str(tmp_path_factory.mktemp("cache")), **SETTINGS)


@pytest.fixture(scope="module")
def served(generator):
    generator.engines()  # as the stage does: models load before it listens
    with InThread(create_app(generator, "wsd", api_key=None, max_batch=64, batch_wait_s=0.005)) as server:
        yield server


@pytest.fixture(scope="module")
def records(tiny_models, tmp_path_factory, pool) -> dict:
    """The generate stage's records of QUESTIONS, by question, with the same settings."""
    folder = tmp_path_factory.mktemp("stage")
    prompts = folder / "q.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    cfg = compose(tiny_overrides(tiny_models, folder, "benchmark=jsonl", f"benchmark.path={prompts}",
                                 *(f"wsd.{k}={v}" for k, v in SETTINGS.items()),
                                 f"generation.max_new_tokens={MAX_TOKENS}"))
    summary = generate.run(cfg, pool)
    return {QUESTIONS[int(r["id"][1:])]: r for r in map(json.loads, open(summary["records"]))}


def chat(question: str, **extra) -> dict:
    return {"model": "wsd", "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, **extra}


def test_served_answers_are_the_stage_records_in_any_order_and_concurrency(served, records):
    """Each question three times, shuffled, all at once: every answer is its record."""
    asked = QUESTIONS * 3
    random.Random(0).shuffle(asked)
    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(len(asked)) as threads:
        replies = list(threads.map(lambda q: client.post(f"{served.url}/chat/completions", json=chat(q)), asked))
    assert [r.status_code for r in replies] == [200] * len(asked)
    for question, reply in zip(asked, replies):
        body, record = reply.json(), records[question]
        assert body["object"] == "chat.completion" and body["model"] == "wsd"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": record["response"]}
        assert body["choices"][0]["finish_reason"] == ("length" if record["stop_reason"] == "length" else "stop")
        switch = body["wsd"]
        assert (switch["keep_count"], switch["switched"], switch["draft_tokens"], switch["continuation_tokens"]) == \
            (record["keep_count"], record["switched"], record["draft_tokens"], record["continuation_tokens"])
        assert switch["switch_position"] == (record["keep_count"] - 1 if record["switched"] else None)
    assert any(records[q]["switched"] for q in QUESTIONS)  # the switch is exercised, not only whole drafts


def test_openai_client_streamed_and_not(served, records):
    from openai import OpenAI

    client = OpenAI(base_url=served.url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["wsd"]
    question = QUESTIONS[1]
    whole = client.chat.completions.create(model="wsd", messages=[{"role": "user", "content": question}],
                                           max_tokens=MAX_TOKENS)
    assert whole.choices[0].message.content == records[question]["response"]
    assert whole.model_extra["wsd"]["keep_count"] == records[question]["keep_count"]
    assert whole.usage.completion_tokens == records[question]["response_tokens"] and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="wsd", messages=[{"role": "user", "content": question}],
                                                 max_tokens=MAX_TOKENS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == records[question]["response"]
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].model_extra["wsd"] == {**whole.model_extra["wsd"], "seconds": chunks[-1].model_extra["wsd"]["seconds"]}


@pytest.mark.parametrize("body, status, message", [
    (chat(QUESTIONS[0], temperature=0.7), 400, "decodes greedily; generation.temperature must be 0"),
    ({**chat(QUESTIONS[0]), "model": "gpt-4"}, 404, "model 'gpt-4' is not served here; this server serves 'wsd'"),
    (chat("word " * 3000), 400, r"needs \d+ prompt \+ 12 draft = \d+ tokens, the model's context is \d+"),
    ({"model": "wsd"}, 422, "malformed request: body.messages: Field required"),
    (chat(QUESTIONS[0], max_tokens=0), 422, "body.max_tokens: Input should be greater than or equal to 1"),
    (chat(QUESTIONS[0], n=2), 400, "n must be 1"),
])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(served, records, body, status, message):
    import re

    with httpx.Client(timeout=600) as client:
        reply = client.post(f"{served.url}/chat/completions", json=body)
        assert reply.status_code == status and re.search(message, reply.json()["error"]["message"]), reply.text
        after = client.post(f"{served.url}/chat/completions", json=chat(QUESTIONS[2]))
    assert after.json()["choices"][0]["message"]["content"] == records[QUESTIONS[2]]["response"]


def test_a_greedy_server_sets_a_requested_temperature_aside(generator, records):
    with InThread(create_app(generator, "wsd", api_key=None, max_batch=8, batch_wait_s=0, greedy=True)) as server, \
            httpx.Client(timeout=600) as client:
        reply = client.post(f"{server.url}/chat/completions", json=chat(QUESTIONS[0], temperature=0.7)).json()
    assert reply["choices"][0]["message"]["content"] == records[QUESTIONS[0]]["response"]
    assert reply["wsd"]["sampling_set_aside"] == {"temperature": 0.7}


def test_an_api_key_is_asked_when_set(generator):
    with InThread(create_app(generator, "wsd", api_key="s3cret", max_batch=8, batch_wait_s=0)) as server, \
            httpx.Client(timeout=600) as client:
        assert client.get(f"{server.url}/models").status_code == 401
        wrong = client.get(f"{server.url}/models", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert client.get(f"{server.url}/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


class Recording:
    """A generator whose calls are recorded (which prompts went into which batch)."""

    def __init__(self, generator):
        self.generator, self.calls = generator, []

    def answer_each(self, prompts, **options):
        self.calls.append(([p[-1]["content"] for p in prompts], options))
        return self.generator.answer_each(prompts, **options)


def test_requests_that_arrive_together_are_decoded_together_and_a_cancelled_one_is_left_out(generator, records):
    recording = Recording(generator)

    async def scenario():
        batcher = MicroBatcher(recording, max_batch=64, wait_s=0)
        batcher.start()
        ask = lambda q, **o: asyncio.ensure_future(batcher.answer([{"role": "user", "content": q}], **o))  # noqa: E731
        tasks = [ask(q, max_new_tokens=MAX_TOKENS) for q in QUESTIONS[:3]]
        left = ask(QUESTIONS[3], max_new_tokens=MAX_TOKENS)
        other = ask(QUESTIONS[0], max_new_tokens=MAX_TOKENS - 5)  # other options: a batch of its own
        await asyncio.sleep(0)  # every request is queued; the client of `left` leaves before its batch
        left.cancel()
        answers = await asyncio.gather(*tasks, other)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert recording.calls == [(QUESTIONS[:3], {"max_new_tokens": MAX_TOKENS}),
                               ([QUESTIONS[0]], {"max_new_tokens": MAX_TOKENS - 5})]
    assert [a.response for a in answers[:3]] == [records[q]["response"] for q in QUESTIONS[:3]]
    [alone] = generator.generate([QUESTIONS[0]], max_new_tokens=MAX_TOKENS - 5)
    assert (answers[3].response, answers[3].keep_count) == (alone.response, alone.keep_count)


def test_sixty_four_clients_some_leaving_get_their_records_and_nothing_is_left_behind(generator, records):
    """A bounded load: 64 clients, 2 requests each, every 8th client gone before its first answer
    (a 1 ms read timeout). Every completed answer is its record; afterwards the queue is empty,
    the server answers, and the process holds about the memory it held before."""
    import gc

    import psutil

    app = create_app(generator, "wsd", api_key=None, max_batch=64, batch_wait_s=0.005)
    completed, left = [], []

    def client(i: int) -> None:
        timeout = httpx.Timeout(600, read=0.001) if i % 8 == 0 else httpx.Timeout(600)
        with httpx.Client(timeout=timeout) as http:
            for j in range(2):
                question = QUESTIONS[(i + j) % len(QUESTIONS)]
                try:
                    reply = http.post(f"{server.url}/chat/completions", json=chat(question))
                except httpx.ReadTimeout:
                    left.append(question)
                    return
                completed.append((question, reply.status_code, reply.json()["choices"][0]["message"]["content"]))

    with InThread(app) as server:
        client(1)  # warm: the first answers allocate what every later one reuses
        gc.collect()
        before = psutil.Process().memory_info().rss
        completed.clear()
        with ThreadPoolExecutor(64) as threads:
            list(threads.map(client, range(64)))
        batcher = app.state.batcher
        assert batcher.queue.empty()
        with httpx.Client(timeout=600) as http:
            after = http.post(f"{server.url}/chat/completions", json=chat(QUESTIONS[3])).json()
    assert after["choices"][0]["message"]["content"] == records[QUESTIONS[3]]["response"]
    assert len(completed) + len(left) >= 64 + 56 and left  # the leaving clients asked once each
    assert all(status == 200 and text == records[q]["response"] for q, status, text in completed)
    gc.collect()
    grown_mib = (psutil.Process().memory_info().rss - before) / 2**20
    assert grown_mib < 512, f"the process grew by {grown_mib:.0f} MiB under load"


def test_with_two_workers_a_batch_starts_while_another_decodes(generator):
    """The async engine's setting (`workers` > 1): the second batch does not wait for the first.
    The first call waits until the second has begun; one worker would never begin it."""
    import threading

    second_began = threading.Event()

    class Overlapping(Recording):
        def answer_each(self, prompts, **options):
            if not self.calls:
                self.calls.append("first")
                overlapped = second_began.wait(timeout=120)  # a liveness bound, not a timing verdict
                self.calls.append(f"first saw the second begin: {overlapped}")
            else:
                self.calls.append("second")
                second_began.set()
            return self.generator.answer_each(prompts, **options)

    generator.engines()  # loaded first, as the server does before it listens
    recording = Overlapping(generator)

    async def scenario():
        batcher = MicroBatcher(recording, max_batch=64, wait_s=0, workers=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.answer([{"role": "user", "content": QUESTIONS[0]}], max_new_tokens=8))
        while not recording.calls:  # the first batch is decoding
            await asyncio.sleep(0.01)
        second = batcher.answer([{"role": "user", "content": QUESTIONS[1]}], max_new_tokens=8)
        await asyncio.gather(first, second)
        await batcher.stop()

    asyncio.run(scenario())
    assert recording.calls == ["first", "second", "first saw the second begin: True"]


class PendingPipelines:
    """The generator's per-request face (as on vLLM's async engine), whose pipelines never
    finish: what the server does with a pipeline whose client leaves."""

    def __init__(self, generator):
        self.generator, self.entry = generator, generator.entry
        self.started, self.cancelled = threading.Semaphore(0), threading.Semaphore(0)

    def options_config(self, **options):
        return self.generator.options_config(**options)

    def answers_per_request(self) -> bool:
        return True

    async def answer_async(self, messages, **options):
        self.started.release()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.release()
            raise


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_its_per_request_pipeline(generator, stream):
    """Streamed or not, a client that hangs up mid-answer has its pipeline cancelled (on vLLM
    that aborts its engine requests), and the server goes on serving."""
    pipelines = PendingPipelines(generator)
    with InThread(create_app(pipelines, "wsd", None, max_batch=64, batch_wait_s=0.005)) as server:
        port = int(server.url.split(":")[-1].split("/")[0])
        body = json.dumps(chat(QUESTIONS[0], stream=stream)).encode()
        client = socket.create_connection(("127.0.0.1", port), timeout=60)
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert pipelines.started.acquire(timeout=60)  # liveness bounds, not timings
        client.close()
        assert pipelines.cancelled.acquire(timeout=60)
        assert httpx.get(f"{server.url}/models", timeout=60).json()["data"][0]["id"] == "wsd"
