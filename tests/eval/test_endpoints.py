import os
import socket

import pytest

from eval.endpoints import ClientSettings, JudgmentLog, _flags, check_endpoint, open_endpoint


def _client(**settings) -> ClientSettings:
    return ClientSettings.from_config({"model": "judge", **settings})


def _echo(body: dict) -> str:
    return "seen: " + body["messages"][-1]["content"]


def test_bad_endpoints_fail_in_milliseconds_with_what_to_set(monkeypatch):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="'local' or an http"):
        check_endpoint("api.openai.com", _client())
    with pytest.raises(ValueError, match="judge.client.model"):
        check_endpoint("https://api.example.com/v1", ClientSettings.from_config({}))
    with pytest.raises(ValueError, match="API key in the environment variable JUDGE_KEY"):
        check_endpoint("https://api.example.com/v1", _client(api_key_env="JUDGE_KEY"))
    check_endpoint("http://127.0.0.1:8000/v1", _client(api_key_env="JUDGE_KEY"))  # loopback: no key needed
    monkeypatch.setenv("JUDGE_KEY", "secret")
    check_endpoint("https://api.example.com/v1", _client(api_key_env="JUDGE_KEY"))
    with pytest.raises(ValueError, match="serve.model"):
        check_endpoint("local", _client(serve={"model": None}))
    with pytest.raises(ValueError, match="unknown setting"):
        ClientSettings.from_config({"concurency": 4})


def test_an_endpoint_that_does_not_answer_is_named_before_any_item(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ConnectionError, match=f"endpoint {url} does not answer"):
        with open_endpoint(url, _client(), tmp_path):
            pass


def test_a_model_the_endpoint_does_not_serve_is_named(stand_in, tmp_path):
    url, _ = stand_in(_echo, models=["other-model"])
    with pytest.raises(ValueError, match="does not serve model 'judge'; it serves other-model"):
        with open_endpoint(url, _client(), tmp_path):
            pass


def test_rate_limits_and_server_errors_are_retried_with_backoff(stand_in, tmp_path):
    url, server = stand_in(_echo)
    server.failures = [429, 500, 503]
    with open_endpoint(url, _client(max_retries=3), tmp_path) as chat:
        assert chat.complete([chat.request([{"role": "user", "content": "Q"}])]) == ["seen: Q"]
    assert len(server.chats()) == 4  # three failures, then the answer
    server.failures = [500, 500]
    with open_endpoint(url, _client(max_retries=1), tmp_path / "other") as chat:
        with pytest.raises(Exception, match="500"):
            chat.complete([chat.request([{"role": "user", "content": "R"}])])


def test_answers_are_logged_as_they_arrive_and_never_asked_twice(stand_in, tmp_path, monkeypatch):
    url, server = stand_in(_echo)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-written")
    questions = [[{"role": "user", "content": f"Q{i}"}] for i in range(5)]
    with open_endpoint(url, _client(concurrency=3), tmp_path) as chat:
        first = chat.complete([chat.request(q, temperature=0.0) for q in questions[:3]])
    assert first == ["seen: Q0", "seen: Q1", "seen: Q2"]
    with open_endpoint(url, _client(concurrency=3), tmp_path) as chat:  # a rerun: only the two new ones asked
        again = chat.complete([chat.request(q, temperature=0.0) for q in questions])
    assert again == [f"seen: Q{i}" for i in range(5)]
    assert sorted(b["messages"][0]["content"] for b in server.chats()) == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    assert len(JudgmentLog(tmp_path / "judgments.jsonl")._known) == 5
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "sk-never-written" not in written and "seen: Q4" in written


def test_engine_arguments_become_vllm_serve_flags():
    assert _flags({"max_model_len": 4096, "enforce_eager": True, "enable_prefix_caching": False,
                   "hf_overrides": {"a": 1}, "served_model_name": "j"}) == [
        "--max-model-len", "4096", "--enforce-eager", "--no-enable-prefix-caching", "--hf-overrides", '{"a": 1}',
        "--served-model-name", "j"]


def test_local_server_command_serves_the_judge_model_on_loopback(tiny_models, tmp_path):
    from eval.endpoints import LocalServer, ServeSettings

    model = {"name": "tiny-judge", "path": tiny_models["pilot"], "dtype": "float32",
             "vllm": {"max_model_len": 256, "tensor_parallel_size": 1}}
    server = LocalServer(ServeSettings(model=model, seed=3, args={"api-server-count": 1}),
                         tmp_path / "server.log")
    server.port = 12345
    command = server.command()
    assert command[1:4] == ["-m", "eval.serve_vllm", tiny_models["pilot"]]
    flags = " ".join(command[4:])
    for expected in ("--host 127.0.0.1", "--port 12345", "--served-model-name tiny-judge", "--max-model-len 256",
                     "--dtype float32", "--seed 3", "--api-server-count 1"):
        assert expected in flags
    assert server.base_url == "http://127.0.0.1:12345/v1"
    # vLLM reads whole GiB: "2.0" in the environment would break every later engine of this process
    assert server._env()["VLLM_CPU_KVCACHE_SPACE"] == "2" and os.environ["VLLM_CPU_KVCACHE_SPACE"].isdigit()
    with pytest.raises(ValueError, match="whole number of GiB"):
        LocalServer(ServeSettings(model=model, cpu_kvcache_space_gib=1.5), tmp_path / "server.log")


def test_local_server_that_exits_early_reports_its_log(tiny_models, tmp_path, monkeypatch):
    from eval import endpoints

    model = {"name": "tiny-judge", "path": tiny_models["pilot"], "dtype": "float32"}
    server = endpoints.LocalServer(endpoints.ServeSettings(model=model, start_timeout_s=60), tmp_path / "server.log")
    monkeypatch.setattr(server, "command", lambda: ["sh", "-c", "echo no such model here; exit 3"])
    with pytest.raises(RuntimeError, match="exited with code 3(.|\n)*no such model here"):
        with server:
            pass
    assert "no such model here" in (tmp_path / "server.log").read_text()


def test_a_refused_request_gets_no_verdict_and_is_not_asked_again(stand_in, tmp_path):
    url, server = stand_in(_echo)
    server.failures = [400, 400]  # vLLM's answers to a prompt longer than the judge's context
    with open_endpoint(url, _client(), tmp_path) as chat:
        assert chat.complete([chat.request([{"role": "user", "content": "long"}], max_tokens=16000)]) == [""]
    with open_endpoint(url, _client(), tmp_path) as chat:
        assert chat.complete([chat.request([{"role": "user", "content": "long"}], max_tokens=16000)]) == [""]
    # the second try leaves max_tokens to the server (what its context allows); then no verdict
    assert [b.get("max_tokens") for b in server.chats()] == [16000, None]
    assert "stand-in 400" in (tmp_path / "judgments.jsonl").read_text()
    server.failures = [400]  # only max_tokens was too many: the answer comes without it
    with open_endpoint(url, _client(), tmp_path) as chat:
        assert chat.complete([chat.request([{"role": "user", "content": "short"}], max_tokens=16000)]) == ["seen: short"]


def test_a_judge_model_that_does_not_load_is_named_before_any_server_starts(tmp_path):
    from eval.endpoints import LocalServer, ServeSettings

    model = {"name": "missing-judge", "path": str(tmp_path / "no-such-model")}
    with pytest.raises(ValueError, match="judge model 'missing-judge' does not load"):
        LocalServer(ServeSettings(model=model), tmp_path / "server.log")
    assert not (tmp_path / "server.log").exists()
