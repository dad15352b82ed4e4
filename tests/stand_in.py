"""A local stand-in for an OpenAI-compatible chat server, for the judges' tests (fixture `stand_in`)."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class StandIn:
    """A local stand-in for an OpenAI-compatible server on 127.0.0.1: `reply(body) -> str` writes
    each chat answer; `failures` (HTTP codes) are answered first, one per request; every
    request is kept in `seen`. With `logprobs`, answers carry a first token's top log-probabilities
    of 0.75 for the answer and 0.25 for its swapped case (alpaca_eval's weighted parser)."""

    def __init__(self, reply, models=("judge",)):
        self.reply, self.models = reply, list(models)
        self.failures: list[int] = []
        self.seen: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.seen.append((path, body))
            if self.failures:
                code = self.failures.pop(0)
                return code, {"error": {"message": f"stand-in {code}", "type": "server_error", "code": code}}
        text = self.reply(body)
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        if body.get("logprobs"):
            top = [{"token": text, "logprob": math.log(0.75), "bytes": list(text.encode())},
                   {"token": text.swapcase(), "logprob": math.log(0.25), "bytes": list(text.swapcase().encode())}]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    def chats(self) -> list[dict]:
        return [body for path, body in self.seen if path.endswith("/chat/completions")]


@pytest.fixture
def stand_in():
    """`start(reply, models)` -> (base URL, StandIn); stopped after the test."""
    servers = []

    def start(reply, models=("judge",)):
        state = StandIn(reply, models)

        class Handler(BaseHTTPRequestHandler):
            # keep-alive, as real servers: under HTTP/1.0 the server closes every connection after
            # its answer, and a client that reuses one it has not yet seen closed loses that
            # request (one judgment short, now and then, on a busy machine)
            protocol_version = "HTTP/1.1"

            def _send(self, code: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                                  "owned_by": "me"} for m in state.models]})
                else:
                    self._send(200, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(*state.answer(self.path, body))

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1", state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
