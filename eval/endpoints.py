"""OpenAI-compatible chat endpoints for the LLM judges: a remote API, or a `vllm serve` that the
stage starts on 127.0.0.1 for its lifetime (`endpoint: local`).

The client asks with a thread pool (`concurrency` requests in flight), lets the `openai` client
retry rate limits, 5xx answers, timeouts and dropped connections with exponential backoff, and
writes each answer to a judgment log as it arrives, so a killed evaluation resumes with nothing
asked twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from eval.base import Judge
from wsd.core.schemas import ClientBlock, ServeBlock
from wsd.core.store import RecordFile, config_key

log = logging.getLogger("wsd.endpoints")

LOCAL = "local"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass
class ServeSettings:
    """`endpoint: local`: which model `vllm serve` serves, and how it is started."""

    model: dict = None  # a model config entry as in conf/pilot or conf/base
    model_cache_dir: str = ServeBlock.model_cache_dir
    cpu_kvcache_space_gib: int = ServeBlock.cpu_kvcache_space_gib  # CPU hosts: the server's KV cache, whole GiB
    seed: int = ServeBlock.seed
    start_timeout_s: float = ServeBlock.start_timeout_s  # model load (and, on GPUs, compilation) until /health answers
    args: dict = dataclasses.field(default_factory=dict)  # more `vllm serve` flags, e.g. {api-server-count: 2}


@dataclasses.dataclass
class ClientSettings:
    """How the judge talks to its endpoint (none of it changes a verdict)."""

    model: str | None = None  # the model to ask for; endpoint=local: the served model's name
    api_key_env: str = ClientBlock.api_key_env  # read when the stage starts, never written anywhere
    concurrency: int = ClientBlock.concurrency
    timeout_s: float = ClientBlock.timeout_s  # per request
    max_retries: int = ClientBlock.max_retries  # the openai client's: 429, 5xx, timeouts, dropped connections; exponential backoff
    serve: ServeSettings = dataclasses.field(default_factory=ServeSettings)

    @classmethod
    def from_config(cls, cfg: dict | None) -> ClientSettings:
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"judge.client: unknown setting(s) {sorted(unknown)}; accepted: {sorted(known)}")
        serve = dict(cfg.pop("serve", None) or {})
        unknown = set(serve) - {f.name for f in dataclasses.fields(ServeSettings)}
        if unknown:
            raise ValueError(f"judge.client.serve: unknown setting(s) {sorted(unknown)}")
        settings = cls(**cfg, serve=ServeSettings(**serve))
        if settings.concurrency < 1 or settings.timeout_s <= 0 or settings.max_retries < 0:
            raise ValueError("judge.client: concurrency must be >= 1, timeout_s > 0 and max_retries >= 0")
        return settings


def check_endpoint(endpoint: str, client: ClientSettings) -> None:
    """What can be checked in milliseconds: the URL's form, the model name, and the key of a
    remote endpoint (a loopback server may need none)."""
    if endpoint == LOCAL:
        if not client.serve.model:
            raise ValueError("judge.endpoint=local serves judge.client.serve.model, which is not set")
        return
    url = urlparse(str(endpoint))
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"judge.endpoint must be 'local' or an http(s) URL of an OpenAI-compatible API "
                         f"(such as https://api.openai.com/v1), got {endpoint!r}")
    if not client.model:
        raise ValueError(f"judge.client.model must name the model to ask {endpoint} for")
    if url.hostname not in _LOOPBACK and not os.environ.get(client.api_key_env):
        raise ValueError(f"the judge endpoint {endpoint} needs an API key in the environment variable "
                         f"{client.api_key_env} (judge.client.api_key_env), which is not set")


class JudgmentLog:
    """Every answer the endpoint gave, keyed by its request, appended as it arrives."""

    def __init__(self, path: Path | None):
        self._file = RecordFile(Path(path)) if path else None
        self._known = {r["id"]: r["output"] for r in self._file.read()} if self._file else {}
        self._lock = threading.Lock()

    @staticmethod
    def key(request: dict) -> str:
        return config_key(request)

    def get(self, request: dict) -> str | None:
        return self._known.get(self.key(request))

    def put(self, request: dict, output: str, error: str | None = None) -> None:
        key = self.key(request)
        with self._lock:
            self._known[key] = output
            if self._file:
                self._file.append({"id": key, "request": request, "output": output,
                                   **({"error": error} if error else {})})


class ChatEndpoint:
    """Chat completions from one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, client: ClientSettings, judgments: JudgmentLog, api_key: str):
        from openai import OpenAI

        self.base_url, self.model, self.settings, self.judgments = base_url, model, client, judgments
        self._client = OpenAI(base_url=base_url, api_key=api_key, timeout=client.timeout_s,
                              max_retries=client.max_retries)

    def check_answers(self) -> None:
        """One cheap request (the model list) before any item: a clear message naming the URL."""
        try:
            served = [m.id for m in self._client.with_options(max_retries=1, timeout=30).models.list()]
        except Exception as err:
            raise ConnectionError(f"the judge endpoint {self.base_url} does not answer: "
                                  f"{type(err).__name__}: {err}") from None
        if served and self.model not in served:
            raise ValueError(f"the judge endpoint {self.base_url} does not serve model {self.model!r}; it serves "
                             f"{', '.join(served)} (set judge.client.model)")

    def request(self, messages: list[dict], **sampling) -> dict:
        return {"model": self.model, "messages": messages, **sampling}

    def _ask(self, request: dict) -> str:
        known = self.judgments.get(request)
        if known is not None:
            return known
        from openai import BadRequestError

        asked = dict(request)
        while True:
            try:
                response = self._client.chat.completions.create(**asked)
                break
            except BadRequestError as err:
                if "max_tokens" in asked:  # prompt + max_tokens over the judge's context: as long as it allows
                    log.info("the judge endpoint refused max_tokens=%s (%s); asking without it", asked["max_tokens"], err)
                    asked.pop("max_tokens")
                    continue
                log.warning("the judge endpoint refused a request (%s); it gets no verdict", err)  # the prompt alone
                self.judgments.put(request, "", error=str(err))
                return ""
        output = response.choices[0].message.content or ""
        self.judgments.put(request, output)
        return output

    def complete(self, requests: list[dict]) -> list[str]:
        """The answers to `requests`, in order; those in the judgment log are not asked again."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(requests))) as pool:
            return list(pool.map(self._ask, requests))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(args: dict) -> list[str]:
    """Engine arguments as `vllm serve` flags (booleans as --x / --no-x, dicts as JSON)."""
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The server gets SIGTERM if the stage dies without stopping it (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()


class LocalServer:
    """`vllm serve` of one model on 127.0.0.1 and a free port, for a `with` block: started and
    waited for (bounded), its log kept, stopped on exit and on error."""

    def __init__(self, serve: ServeSettings, log_path: Path):
        from wsd.backends.models import ModelSpec
        from wsd.backends.vllm_engine import VLLMEngine, kvcache_gib

        kvcache_gib(serve.cpu_kvcache_space_gib)  # checked before anything is set or started

        self.spec = ModelSpec.from_config(serve.model)
        backend = {"cpu_kvcache_space_gib": serve.cpu_kvcache_space_gib, "seed": serve.seed}
        try:
            self.engine = VLLMEngine.prepare(self.spec, backend, serve.model_cache_dir)  # checks only, no start
        except OSError as err:
            raise ValueError(f"judge model {self.spec.name!r} does not load: {err}") from err
        self.serve, self.log_path = serve, Path(log_path)
        self.port, self._process = None, None

    @property
    def served_name(self) -> str:
        return self.spec.name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        args = self.engine.engine_args()
        model = args.pop("model")
        args.pop("tokenizer", None)
        args = {**args, **self.serve.args, "host": "127.0.0.1", "port": self.port,
                "served_model_name": self.served_name}
        return [sys.executable, "-m", "eval.serve_vllm", model, *_flags(args)]

    def _env(self) -> dict:
        from wsd.backends.vllm_engine import kvcache_gib

        env = dict(os.environ)
        env["VLLM_CPU_KVCACHE_SPACE"] = kvcache_gib(self.serve.cpu_kvcache_space_gib)
        root = str(Path(__file__).resolve().parents[1])  # eval.serve_vllm, from any working directory
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server runs its engine in its own process
        return env

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.serve.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"`vllm serve` of judge model {self.served_name!r} exited with code "
                                   f"{self._process.returncode} before it was ready; its log ({self.log_path}) "
                                   f"ends:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    return
            time.sleep(1.0)
        raise TimeoutError(f"`vllm serve` of judge model {self.served_name!r} was not ready within "
                           f"{self.serve.start_timeout_s:.0f} s (judge.client.serve.start_timeout_s); its log "
                           f"({self.log_path}) ends:\n{self._log_tail()}")

    def __enter__(self) -> LocalServer:
        self.port = _free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command()
        log.info("starting the judge server: %s (log: %s)", " ".join(command), self.log_path)
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("judge server %s ready at %s after %.0f s", self.served_name, self.base_url,
                 time.monotonic() - started)
        return self

    def stop(self) -> None:
        """SIGTERM to the server's process group (its engine process included), SIGKILL after 30 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc) -> None:
        self.stop()


_KEPT: dict[str, LocalServer] | None = None  # while `kept_servers()` is open: served settings -> server


@contextlib.contextmanager
def kept_servers() -> Iterator[dict[str, LocalServer]]:
    """Local judge servers started inside this block stay up until it ends, shared by every
    evaluation that serves the same judge (make reproduce: one start for all its steps)."""
    global _KEPT
    if _KEPT is not None:  # already inside one
        yield _KEPT
        return
    _KEPT = {}
    try:
        yield _KEPT
    finally:
        servers, _KEPT = list(_KEPT.values()), None
        for server in servers:
            server.stop()


def _local_server(serve: ServeSettings, log_path: Path, stack: contextlib.ExitStack) -> LocalServer:
    """This block's own server, or the kept one serving the same settings."""
    if _KEPT is None:
        return stack.enter_context(LocalServer(serve, log_path))
    key = config_key(dataclasses.asdict(serve))
    if key not in _KEPT or _KEPT[key]._process is None:
        _KEPT[key] = LocalServer(serve, log_path).__enter__()
    return _KEPT[key]


@contextlib.contextmanager
def open_endpoint(endpoint: str, client: ClientSettings, folder: Path | None) -> Iterator[ChatEndpoint]:
    """The judge's endpoint for a `with` block, checked to answer before any item: a remote URL
    as it is, or `local`: a `vllm serve` started here and stopped on leaving (or kept, inside
    `kept_servers()`). Answers are logged in `folder/judgments.jsonl` (the server's log in
    `folder/judge_server.log`)."""
    check_endpoint(endpoint, client)
    judgments = JudgmentLog(Path(folder) / "judgments.jsonl" if folder else None)
    with contextlib.ExitStack() as stack:
        if endpoint == LOCAL:
            log_dir = Path(folder) if folder else Path.cwd()
            server = _local_server(client.serve, log_dir / "judge_server.log", stack)
            url, model, key = server.base_url, server.served_name, "EMPTY"
        else:
            url, model, key = str(endpoint), client.model, os.environ.get(client.api_key_env) or "EMPTY"
        chat = ChatEndpoint(url, model, client, judgments, key)
        chat.check_answers()
        yield chat


@dataclasses.dataclass
class ServedJudge(Judge):
    """What every judge on a chat endpoint shares: the endpoint (`local` or a URL), its client
    settings, and the folder its judgments and server log are kept in (the evaluate stage's).
    The endpoint is opened by `session()`, around the scoring, so a bad URL or key fails
    before any item and a local server lives exactly as long as the scoring."""

    endpoint: str | None = LOCAL  # None: a judge that has another way (AlpacaEval's offline proxy)
    client: dict = None
    folder: str | None = None
    proxy: bool = True  # false only for the judge model a paper's table was made with

    def __post_init__(self):
        self._client = self.check_config({"endpoint": self.endpoint, "client": self.client}, None)
        self._chat: ChatEndpoint | None = None

    @classmethod
    def check_config(cls, judge: dict, benchmark: dict | None) -> ClientSettings:
        """The checks of milliseconds, for a plan's every step before anything runs: the client
        settings, the endpoint's URL, model and key."""
        client = ClientSettings.from_config(judge.get("client"))
        endpoint = judge.get("endpoint", cls.endpoint)
        if endpoint is not None:
            check_endpoint(endpoint, client)
        return client

    @property
    def chat(self) -> ChatEndpoint:
        if self._chat is None:
            raise RuntimeError(f"judge {self.name or type(self).__name__!r} scores inside session() only")
        return self._chat

    @contextlib.contextmanager
    def session(self) -> Iterator[ServedJudge]:
        if self.endpoint is None:
            yield self
            return
        with open_endpoint(self.endpoint, self._client, self.folder) as chat:
            self._chat = chat
            try:
                yield self
            finally:
                self._chat = None
