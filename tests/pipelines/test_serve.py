"""`python -m pipelines.serve` as a user starts it: it loads the models, prints its URL on
127.0.0.1 (a free port), answers as the generate stage records, and stops on SIGTERM."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from pipelines import generate
from tests.conftest import REPO, compose, tiny_overrides

START_TIMEOUT_S = 300  # model loading on a busy machine
STOP_TIMEOUT_S = 60
SWITCH = ("wsd.window=2", "wsd.threshold=0.3")


def started(process: subprocess.Popen, lines: queue.Queue) -> str:
    """The URL the server prints, read within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert process.poll() is None, "the server exited:\n" + "".join(seen)
            continue
        seen.append(line)
        if line.startswith("serving "):
            return line.split(" at ", 1)[1].strip()
    pytest.fail("no URL within the time limit:\n" + "".join(seen))


def test_the_served_stage_answers_as_the_generate_stage(tiny_models, tmp_path):
    question = "What is the capital of France?"
    prompts = tmp_path / "q.jsonl"
    prompts.write_text(json.dumps({"id": "q", "prompt": question}) + "\n")
    summary = generate.run(compose(tiny_overrides(tiny_models, tmp_path, "benchmark=jsonl",
                                                  f"benchmark.path={prompts}", *SWITCH)))
    [record] = [json.loads(line) for line in open(summary["records"])]

    env = {**os.environ, "WSD_API_KEY": "k3y", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "pipelines.serve", *tiny_overrides(tiny_models, tmp_path, *SWITCH)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        url = started(process, lines)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        body = {"model": "wsd", "messages": [{"role": "user", "content": question}], "max_tokens": 20}
        with httpx.Client(timeout=300) as client:
            assert client.post(f"{url}/chat/completions", json=body).status_code == 401
            reply = client.post(f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer k3y"}).json()
        assert reply["choices"][0]["message"]["content"] == record["response"]
        assert reply["wsd"]["keep_count"] == record["keep_count"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("the server did not stop on SIGTERM")
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn shuts down, then re-raises the signal


def test_bad_server_settings_fail_before_any_model_loads(tmp_path):
    """Checked first: the models named here do not even exist."""
    missing = {"pilot": str(tmp_path / "no-pilot"), "base": str(tmp_path / "no-base")}
    result = subprocess.run([sys.executable, "-m", "pipelines.serve", *tiny_overrides(missing, tmp_path),
                             "api_server.port=70000"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "api_server.port must be in [0, 65535], got 70000" in result.stderr
