import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from pipelines import generate
from tests.conftest import REPO, compose, tiny_overrides
from tests.crash import run_until_killed
from wsd.backends import engines
from wsd.weak_to_strong.reference import ReferenceWSD
from wsd.weak_to_strong.switch import keep_count

REQUIRED = {"id", "prompt", "draft", "draft_tokens", "base_token_probs", "keep_count", "accepted_draft",
            "continuation", "response", "stop_reason", "seconds", "pilot", "base"}


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "short", "prompt": "Hi"},
        {"id": "capital", "prompt": "What is the capital of France? Answer in one sentence, please."},
        {"instruction": "Give me three tips for baking bread at home, with a short reason for each tip."},
        {"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Name a colour."},
                                    {"role": "assistant", "content": "Blue."},
                                    {"role": "user", "content": "Another one?"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_tiny(tiny_models, tmp_path, prompt_file, *extra):
    cfg = compose(tiny_overrides(tiny_models, tmp_path, "benchmark=jsonl",
                                          f"benchmark.path={prompt_file}", *extra))
    return generate.run(cfg), cfg


def read_records(summary):
    with open(summary["records"]) as f:
        return [json.loads(line) for line in f]


def test_cross_tokenizer_run_writes_complete_records(tiny_models, tmp_path, prompt_file):
    summary, cfg = run_tiny(tiny_models, tmp_path, prompt_file)
    records = read_records(summary)
    assert [r["id"] for r in records] == ["short", "capital", "line-3", "chat"]
    for r in records:
        assert REQUIRED <= set(r)
        assert r["pilot"] == "tiny-pilot" and r["base"] == "tiny-base"
        assert r["draft"].strip().startswith(r["accepted_draft"])
        assert r["response"].startswith(r["accepted_draft"])
        assert r["keep_count"] == keep_count(r["base_token_probs"], cfg.wsd.window, cfg.wsd.threshold)
        assert r["draft_tokens"] <= cfg.wsd.draft_max_tokens
    assert records[3]["messages"][-1]["content"] == "Another one?"
    alpaca = json.loads(open(summary["alpaca_eval"]).read())
    assert [a["instruction"] for a in alpaca] == [r["prompt"] for r in records]
    assert [a["output"] for a in alpaca] == [r["response"] for r in records]
    assert {a["generator"] for a in alpaca} == {"wsd__tiny-pilot__tiny-base"}
    assert summary["prompts"] == 4 and summary["ids"] == [r["id"] for r in records]


def test_table_lists_this_runs_prompts(tiny_models, tmp_path, prompt_file, capsys):
    run_tiny(tiny_models, tmp_path, prompt_file)
    summary, _ = run_tiny(tiny_models, tmp_path, prompt_file, "benchmark.limit=2")
    generate.print_table(summary)
    shown = capsys.readouterr().out
    assert "short" in shown and "capital" in shown and "chat" not in shown


def test_switch_mid_draft_when_threshold_is_reached(tiny_models, tmp_path, prompt_file):
    """Set the threshold to a window score that occurs mid-draft: the run must switch there."""
    never, _ = run_tiny(tiny_models, tmp_path / "a", prompt_file, "wsd.window=2", "wsd.threshold=1.0")
    record = max(read_records(never), key=lambda r: r["base_draft_tokens"])
    probs = record["base_token_probs"]
    assert record["keep_count"] == len(probs) >= 4
    mid = len(probs) // 2
    score = (probs[mid - 1] * probs[mid]) ** 0.5
    summary, _ = run_tiny(tiny_models, tmp_path / "b", prompt_file, "wsd.window=2", f"wsd.threshold={score}")
    switched = next(r for r in read_records(summary) if r["id"] == record["id"])
    assert switched["base_token_probs"] == pytest.approx(probs)
    assert switched["switched"] and switched["keep_count"] <= mid + 1
    assert switched["keep_count"] == keep_count(probs, 2, score)


def test_second_run_resumes_without_loading_models(tiny_models, tmp_path, prompt_file, monkeypatch):
    first, _ = run_tiny(tiny_models, tmp_path, prompt_file, "benchmark.limit=2")
    assert first["prompts"] == 2
    lines_before = open(first["records"]).read()

    second, _ = run_tiny(tiny_models, tmp_path, prompt_file)  # larger limit: same folder, 2 more
    assert second["run_dir"] == first["run_dir"]
    assert open(second["records"]).read().startswith(lines_before)
    assert [r["id"] for r in read_records(second)] == ["short", "capital", "line-3", "chat"]

    monkeypatch.setattr("wsd.backends.engines.load_engine", lambda *a: pytest.fail("nothing left to decode"))
    third, _ = run_tiny(tiny_models, tmp_path, prompt_file)
    assert len(read_records(third)) == 4


def test_sweep_points_reuse_drafts_across_runs(tiny_models, tmp_path, prompt_file):
    """Two runs that differ only in window/threshold: the second drafts and scores nothing."""
    first, _ = run_tiny(tiny_models, tmp_path, prompt_file, "wsd.early_stop=false", "wsd.threshold=0.3")
    second, _ = run_tiny(tiny_models, tmp_path, prompt_file, "wsd.early_stop=false", "wsd.threshold=0.9",
                         "wsd.window=2")
    assert first["run_dir"] != second["run_dir"]
    assert first["forward_passes"]["pilot_drafting"] > 0
    assert second["forward_passes"]["pilot_drafting"] == second["forward_passes"]["base_scoring"] == 0
    assert all(r["draft_cache_hit"] for r in read_records(second))
    reference, _ = run_tiny(tiny_models, tmp_path, prompt_file, "wsd.implementation=reference", "wsd.threshold=0.9",
                            "wsd.window=2")
    assert [(r["keep_count"], r["response"]) for r in read_records(second)] == \
           [(r["keep_count"], r["response"]) for r in read_records(reference)]


def test_deterministic_for_a_fixed_seed(tiny_models, tmp_path, prompt_file):
    a, _ = run_tiny(tiny_models, tmp_path / "a", prompt_file, "benchmark.limit=2")
    b, _ = run_tiny(tiny_models, tmp_path / "b", prompt_file, "benchmark.limit=2")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(read_records(a)) == strip(read_records(b))


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["wsd.threshold=1.5"], ValueError, r"threshold must be a number in \[0, 1\], got 1.5"),
        (["wsd.window=0"], ValueError, "window must be an integer >= 1, got 0"),
        (["wsd.implementation=turbo"], ValueError, "unknown wsd.implementation .turbo.; accepted: fast, reference"),
        (["pilot.path=/no/such/model"], FileNotFoundError, "folder '/no/such/model' does not exist"),
        (["~base.path", "+base.gguf={parts:[{package:gemma-not-installed,file:m.gguf}]}"], FileNotFoundError,
         "package 'gemma-not-installed' is not installed"),
        (["benchmark.path=/no/such.jsonl"], FileNotFoundError, "benchmark file '/no/such.jsonl' does not exist"),
        (["benchmark.name=mmlu"], ValueError, "unknown benchmark 'mmlu'"),
        (["method=nudging", "method.threshold=2"], ValueError, r"method.threshold must be in \(0, 1\], got 2"),
        (["method=urial", "method.prompt_file=/no/urial.txt"], FileNotFoundError, "URIAL prompt file"),
        (["method.name=beam"], ValueError, "unknown method 'beam'"),
        (["generation.batch_size=0"], ValueError, "generation.batch_size must be an integer >= 1, got 0"),
        (["logger.name=tensorboard"], ValueError, "unknown logger 'tensorboard'; accepted: wandb, none"),
    ],
)
def test_bad_config_fails_before_models_load_and_keeps_records(
    tiny_models, tmp_path, prompt_file, monkeypatch, overrides, error, message
):
    done, _ = run_tiny(tiny_models, tmp_path, prompt_file, "benchmark.limit=1")
    before = open(done["records"]).read()
    monkeypatch.setattr("wsd.backends.engines.load_engine", lambda *a: pytest.fail("loaded a model despite bad input"))
    with pytest.raises(error, match=message):
        run_tiny(tiny_models, tmp_path, prompt_file, *overrides)
    assert open(done["records"]).read() == before


@pytest.mark.parametrize(
    "line, message",
    [('{"id": "x", "prompt": "  "}', r"prompts.jsonl:5: the prompt is empty"),
     ('{"id": "x", "prompt": "unclosed', r"prompts.jsonl:5: malformed JSON")],
)
def test_bad_prompt_file_fails_before_models_load(tiny_models, tmp_path, prompt_file, monkeypatch, line, message):
    with open(prompt_file, "a") as f:
        f.write(line + "\n")
    monkeypatch.setattr("wsd.backends.engines.load_engine", lambda *a: pytest.fail("loaded a model despite bad input"))
    with pytest.raises(ValueError, match=message):
        run_tiny(tiny_models, tmp_path, prompt_file)


def test_over_long_prompt_is_rejected_before_decoding(tiny_models, tmp_path, prompt_file, monkeypatch):
    with open(prompt_file, "a") as f:
        f.write(json.dumps({"id": "huge", "prompt": "word " * 3000}) + "\n")
    monkeypatch.setattr(ReferenceWSD, "generate", lambda *a: pytest.fail("decoded before checking"))
    with pytest.raises(ValueError, match=r"prompt 'huge' is too long for tiny-pilot: needs .* context is 2048"):
        run_tiny(tiny_models, tmp_path, prompt_file)


def test_unknown_config_choice():
    with pytest.raises(MissingConfigException, match="pilot/gpt5"):
        compose(["pilot=gpt5"])


def test_cli_exits_non_zero_with_the_message(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.generate", "wsd.threshold=-0.2", f"output_root={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "threshold must be a number in [0, 1], got -0.2" in result.stderr


# ---- methods, multi-turn benchmarks, logging, resuming and sharding


@pytest.mark.parametrize("method", ["base", "urial", "pilot", "wsd", "nudging"])
def test_mt_bench_second_turn_has_the_first_answer_in_context(tiny_models, tmp_path, method):
    cfg = compose(tiny_overrides(tiny_models, tmp_path, "benchmark=mt_bench", "benchmark.limit=2",
                                          f"method={method}"))
    summary = generate.run(cfg)
    records = read_records(summary)
    assert [r["id"] for r in records] == ["mt_bench-081", "mt_bench-081/turn-2", "mt_bench-082",
                                          "mt_bench-082/turn-2"]
    for first, second in (records[0:2], records[2:4]):
        assert (first["turn"], second["turn"]) == (1, 2)
        assert second["question_id"] == first["id"]
        assert second["messages"][:2] == [first["messages"][0], {"role": "assistant", "content": first["response"]}]
        assert second["messages"][2]["role"] == "user" and second["prompt"] == second["messages"][2]["content"]
        assert first["method"] == second["method"] == method
    alpaca = json.loads(open(summary["alpaca_eval"]).read())
    assert [a["turn"] for a in alpaca] == [1, 2, 1, 2]
    assert summary["method"] == method and summary["prompts"] == 4


def test_baselines_ignore_the_wsd_block_and_are_shared_by_sweep_points(tiny_models, tmp_path, prompt_file):
    a, _ = run_tiny(tiny_models, tmp_path, prompt_file, "method=base", "wsd.threshold=0.3")
    b, _ = run_tiny(tiny_models, tmp_path, prompt_file, "method=base", "wsd.threshold=0.9")
    assert a["run_dir"] == b["run_dir"] and b["written_now"] == 0
    assert "base__tiny-base__" in a["run_dir"] and "tiny-pilot" not in a["run_dir"]


def test_methods_of_one_process_reuse_loaded_models(tiny_models, tmp_path, prompt_file, monkeypatch):
    loads = []
    real = engines.load_engine
    monkeypatch.setattr(engines, "load_engine", lambda spec, *a: loads.append(spec.name) or real(spec, *a))
    monkeypatch.setattr(generate, "POOL", engines.ModelPool())
    for method in ("base", "urial", "pilot", "wsd", "nudging", "base"):
        run_tiny(tiny_models, tmp_path, prompt_file, f"method={method}", "benchmark.limit=1")
    assert loads == ["tiny-base", "tiny-pilot"]
    run_tiny(tiny_models, tmp_path, prompt_file, "method=pilot", "pilot.name=other-pilot", "benchmark.limit=1")
    assert loads == ["tiny-base", "tiny-pilot", "other-pilot"] and generate.POOL.loaded == 2


def read_wandb_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """An offline run as W&B's own reader sees it (`wandb leet inspect`: the run's state and
    summary, and its records), after W&B's service has shut down, so every record is written."""
    import wandb

    wandb.teardown()  # waits for the service to write out and exit; the next init starts a new one
    cli = [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json"]
    state = subprocess.run([*cli, "--summary", str(run_dir)], capture_output=True, text=True, check=True, timeout=120)
    records = subprocess.run([*cli, str(run_dir)], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(state.stdout), [json.loads(line) for line in records.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_is_written_and_readable(tiny_models, tmp_path, prompt_file):
    summary, cfg = run_tiny(tiny_models, tmp_path, prompt_file, "logger=wandb", "logger.mode=offline",
                            "name=unit-test", "benchmark.limit=2")
    [run_dir] = list((tmp_path / "outputs" / "wandb" / "wandb").glob("offline-run-*"))
    state, records = read_wandb_run(run_dir)
    assert state["state"] == "finished" and state["exit_code"] == 0
    assert {"mean_keep_count", "tokens_per_second", "prompts"} <= set(state["summary"])
    assert state["summary"]["prompts"] == 2 and state["config"]["pilot"]["name"] == "tiny-pilot"
    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert (run["run_group"], run["job_type"]) == ("unit-test", "generate")
    [table] = list(run_dir.glob("files/media/table/records_*.table.json"))
    rows = json.loads(table.read_text())
    assert [r[rows["columns"].index("id")] for r in rows["data"]] == ["short", "capital"]
    events = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "events.jsonl"))]
    assert [e["event"] for e in events] == ["start", "summary", "finished"]
    assert events[0]["wandb"] and events[1]["prompts"] == 2


def long_prompts(tmp_path, n=6):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}: tell me about bread."}) + "\n"
                            for i in range(n)))
    return path


def stage_command(tiny_models, out, prompts, *extra):
    return ["-m", "pipelines.generate", *tiny_overrides(tiny_models, out, "benchmark=jsonl",
                                                         f"benchmark.path={prompts}", *extra)]


def test_sigkilled_run_resumes_with_exactly_one_record_per_prompt(tiny_models, tmp_path):
    prompts = long_prompts(tmp_path)
    args = ("method=base", "generation.batch_size=1", "generation.fixed_length=true",
            "generation.max_new_tokens=24")
    stage = stage_command(tiny_models, tmp_path / "run", prompts, *args)
    run_until_killed("records", 2, stage[1], stage[2:])  # stage: ["-m", module, *overrides]
    [records] = list((tmp_path / "run" / "outputs" / "generate").glob("jsonl/*/records.jsonl"))
    before = records.read_text()
    assert before.count("\n") == 2

    command = [sys.executable, *stage]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=600)
    after = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["id"] for r in after] == [f"p{i}" for i in range(6)]
    assert records.read_text().startswith(before)

    fresh = [sys.executable, *stage_command(tiny_models, tmp_path / "fresh", prompts, *args)]
    subprocess.run(fresh, cwd=REPO, check=True, capture_output=True, timeout=600)
    [uninterrupted] = list((tmp_path / "fresh" / "outputs" / "generate").glob("jsonl/*/records.jsonl"))
    assert [r["response"] for r in after] == [json.loads(x)["response"] for x in uninterrupted.read_text().splitlines()]


@pytest.mark.parametrize("method", ["base", "wsd"])
def test_accelerate_shards_across_two_processes_and_merges(tiny_models, tmp_path, method):
    """Both ranks write shared files too (WSD: the draft cache's identity), at once."""
    prompts = long_prompts(tmp_path, n=5)
    args = (f"method={method}", "generation.batch_size=2", f"draft_cache_dir={tmp_path / 'drafts'}")
    # a single process did part of the work earlier: the sharded run resumes it
    subprocess.run([sys.executable, *stage_command(tiny_models, tmp_path, prompts, *args, "benchmark.limit=2")],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launch, *stage_command(tiny_models, tmp_path, prompts, *args)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [folder] = list((tmp_path / "outputs" / "generate" / "jsonl").iterdir())
    records = [json.loads(line) for line in open(folder / "records.jsonl")]
    assert [r["id"] for r in records] == [f"p{i}" for i in range(5)]
    assert not (folder / "shards").exists()
    assert "[rank 1]" in result.stderr  # both ranks decoded
    single = subprocess.run([sys.executable, *stage_command(tiny_models, tmp_path / "single", prompts, *args)],
                            cwd=REPO, capture_output=True, timeout=600)
    assert single.returncode == 0
    [alone] = list((tmp_path / "single" / "outputs" / "generate" / "jsonl").iterdir())
    assert [r["response"] for r in records] == [json.loads(x)["response"] for x in open(alone / "records.jsonl")]
    if method == "wsd":
        [cache] = list((tmp_path / "drafts").iterdir())
        assert len(list(cache.glob("*.json"))) == 5 + 1  # a draft per prompt and the identity, no temporary file
        assert not list(cache.glob(".*"))


def test_the_multirun_flag_may_follow_overrides(monkeypatch):
    """`python -m pipelines.generate backend=vllm -m a=1,2`: Hydra alone rejects `-m` there."""
    from pipelines import multirun_flag_first

    monkeypatch.setattr("sys.argv", ["generate.py", "backend=vllm", "-m", "benchmark=a,b", "method=base"])
    multirun_flag_first()
    assert sys.argv == ["generate.py", "-m", "backend=vllm", "benchmark=a,b", "method=base"]
