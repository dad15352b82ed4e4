"""The served judges on a real `vllm serve` of the embedded judge (SmolLM2-135M-Instruct) on
127.0.0.1: started once for the module inside `kept_servers()` (as make reproduce keeps it),
reused by every judge here, and checked stopped afterwards.

The 135M judge is weak: it often writes no verdict label, which the judges must count as
unparsed rather than fail on. The checks are on what the code could get wrong: the requests,
the parsing, the records, resume, and the server's lifecycle.
"""

import json
import socket

import pytest
from omegaconf import OmegaConf

from eval.arena_hard import ArenaHardJudge, verdict
from eval.endpoints import ClientSettings, kept_servers, open_endpoint
from eval.judges import AlpacaEvalJudge
from eval.mt_bench import MTBenchGradingJudge, parse_rating
from pipelines import evaluate, generate
from wsd.data.prompt_sets import load_benchmark
from wsd.methods import compose

pytest.importorskip("vllm")
pytestmark = pytest.mark.integration

STAGE = ["backend=hf", "method=pilot", "logger=none", "generation.max_new_tokens=24"]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client settings, base URL, served name) of the module's judge server."""
    cfg = OmegaConf.to_container(compose(["judge=mt_bench_grading", *STAGE], "evaluate"), resolve=True)
    client = ClientSettings.from_config(cfg["judge"]["client"])
    folder = tmp_path_factory.mktemp("judge-server")
    with kept_servers() as servers:
        with open_endpoint("local", client, folder) as chat:
            url, name = chat.base_url, chat.model
        (server,) = servers.values()
        assert _port_open(server.port)  # kept up after the block that started it
        yield client, url, name
    assert server._process is None and not _port_open(server.port)  # stopped with the block
    assert "Application startup complete" in (folder / "judge_server.log").read_text()


def _answers(benchmark: str, limit: int) -> list[dict]:
    """Real benchmark items with short answers of our own."""
    prompts = load_benchmark({**OmegaConf.to_container(compose([f"benchmark={benchmark}", *STAGE], "evaluate").benchmark,
                                                       resolve=True), "limit": limit})
    items = []
    for p in prompts:
        messages = list(p.messages)
        for turn, question in enumerate([messages[-1]["content"], *p.followups], start=1):
            if turn > 1:
                messages = [*messages, {"role": "assistant", "content": items[-1]["response"]},
                            {"role": "user", "content": question}]
            items.append({"id": p.id if turn == 1 else f"{p.id}/turn-{turn}", "turn": turn, "prompt": question,
                          "messages": messages, "response": f"Here is my short answer to part {turn}.",
                          "meta": p.meta})
    return items


def test_mt_bench_grading_on_the_served_judge(served, tmp_path):
    client, url, name = served
    judge = MTBenchGradingJudge(endpoint=url, client={"model": name}, folder=str(tmp_path), max_tokens=96)
    items = _answers("mt_bench", 2)  # two questions, both turns
    judge.check_items(items)
    with judge.session():
        scores = judge.score(items)
    assert [s["judge_prompt"] for s in scores] == ["single-v1", "single-v1-multi-turn"] * 2
    for s in scores:
        assert s["judgment"].strip()  # the served model answered
        assert s["rating"] == parse_rating(s["judgment"])
        assert s["parsed"] == float(s["rating"] is not None)
    logged = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert len(logged) == 4 and {r["output"] for r in logged} == {s["judgment"] for s in scores}
    with judge.session():  # resumed: every answer from the log, the same scores
        assert judge.score(items) == scores
    assert len((tmp_path / "judgments.jsonl").read_text().splitlines()) == 4


def test_arena_hard_against_the_shipped_baselines_on_the_served_judge(served, tmp_path):
    client, url, name = served
    judge = ArenaHardJudge(endpoint=url, client={"model": name}, folder=str(tmp_path), max_tokens=64)
    items = _answers("arena_hard", 2)
    judge.check_items(items)
    with judge.session():
        scores = judge.score(items)
    for s in scores:
        assert len(s["judgments"]) == 2 and all(j.strip() for j in s["judgments"])
        assert s["verdicts"] == [verdict(j, judge._patterns) for j in s["judgments"]]
        assert (s["outcomes"] is None) == (s["judged"] == 0.0)
    assert len((tmp_path / "judgments.jsonl").read_text().splitlines()) == 4
    estimates = judge.estimates(scores, items)
    assert all(0.0 <= e["mean"] <= 100.0 and e["n"] >= 1 for e in estimates.values())


def test_alpaca_eval_annotator_on_the_served_judge(served, tmp_path):
    client, url, name = served
    judge = AlpacaEvalJudge(endpoint=url, client={"model": name}, folder=str(tmp_path))
    items = [{**item, "reference": item["meta"]["reference"]} for item in _answers("alpaca_eval", 2)]
    with judge.session():
        scores = judge.score(items)
    assert len(scores) == 2
    assert all(s is None or 1.0 <= s["preference"] <= 2.0 for s in scores)


def test_the_evaluate_stage_serves_its_judge_with_endpoint_local(served, tmp_path):
    """The issue's command, `judge=mt_bench_grading judge.endpoint=local`, on a real MT-Bench
    generation run (the kept server is reused: same settings)."""
    overrides = [*STAGE, "benchmark=mt_bench", "benchmark.limit=1", f"output_root={tmp_path}"]
    generate.run(compose(overrides))
    summary = evaluate.run(compose([*overrides, "judge=mt_bench_grading", "judge.endpoint=local",
                                             "judge.max_tokens=64"], "evaluate"))
    assert summary["items"] == 2 and summary["proxy"]
    assert summary["metrics"]["parsed"]["n"] == 2
    rows = [json.loads(line) for line in open(summary["scores"])]
    assert [r["turn"] for r in rows] == [1, 2] and all(r["scores"]["judgment"] for r in rows)
