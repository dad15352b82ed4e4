"""The real embedded pair: SmolLM2-135M-Instruct (pilot) -> Gemma-3-270M (base)."""

import json
import re
import subprocess
import sys

import pytest

from pipelines import generate
from tests.conftest import REPO, compose
from wsd.backends.models import ModelSpec, packaged_folder, packaged_folder_path
from wsd.weak_to_strong.switch import keep_count

pytestmark = pytest.mark.integration


SHORT = ["benchmark=alpaca_eval", "benchmark.limit=3", "wsd.draft_max_tokens=24", "generation.max_new_tokens=40", "logger=none"]


def run_stage(tmp_path, *overrides) -> list[dict]:
    summary = generate.run(compose([*SHORT, f"output_root={tmp_path}", *overrides]))
    return [json.loads(line) for line in open(summary["records"])]


@pytest.fixture(scope="module")
def fast_records(tmp_path_factory):
    return run_stage(tmp_path_factory.mktemp("fast"))


def test_engines_agree_on_the_embedded_pair(fast_records, tmp_path):
    reference = run_stage(tmp_path, "wsd.implementation=reference")
    assert [(r["keep_count"], r["response"]) for r in fast_records] == \
           [(r["keep_count"], r["response"]) for r in reference]


def test_embedded_pair_generates_records(fast_records):
    records = fast_records
    assert [r["id"] for r in records] == ["alpaca_eval-000", "alpaca_eval-001", "alpaca_eval-002"]
    for r in records:
        assert (r["pilot"], r["base"]) == ("SmolLM2-135M-Instruct", "gemma-3-270m")
        assert 0 < r["draft_tokens"] <= 24
        assert r["base_draft_tokens"] == len(r["base_token_probs"]) > 0
        assert r["batch_size"] == 3
        assert r["keep_count"] == keep_count(r["base_token_probs"], 6, 0.8)
        assert r["draft"].strip().startswith(r["accepted_draft"])
        assert r["response"].startswith(r["accepted_draft"]) and r["response"].strip()
        assert r["continuation_tokens"] <= 50  # (40 - k) rounded up to 50
        assert "[User]" not in r["response"]


def test_pilot_baseline_is_the_wsd_draft(tmp_path):
    """The pilot alone with a 24-token budget writes exactly WSD's full 24-token drafts."""
    drafts = run_stage(tmp_path, "wsd.early_stop=false")
    pilot = run_stage(tmp_path, "method=pilot", "generation.max_new_tokens=24")
    assert [r["response"] for r in pilot] == [r["draft"] for r in drafts]


def test_nudging_that_never_hands_over_is_the_base_baseline(tmp_path):
    base = run_stage(tmp_path, "method=base", "benchmark.limit=2")
    nudging = run_stage(tmp_path, "method=nudging", "method.threshold=1e-9", "benchmark.limit=2")
    assert [r["handovers"] for r in nudging] == [0, 0]
    assert [r["response"] for r in nudging] == [r["response"] for r in base]


def test_urial_and_nudging_answer_in_their_own_format(tmp_path):
    for record in run_stage(tmp_path, "method=urial", "benchmark.limit=2"):
        assert "# Query" not in record["response"] and not record["response"].endswith("```")
    for record in run_stage(tmp_path, "method=nudging", "benchmark.limit=2"):
        assert record["handovers"] >= 1 and 0 < record["pilot_char_share"] <= 1
        assert record["pilot_words"][0].strip() in record["response"]


CONVERT = """
import sys
from omegaconf import OmegaConf
from wsd.backends.models import ModelSpec, packaged_folder
spec = ModelSpec.from_config(OmegaConf.load(sys.argv[1]))
print(packaged_folder(spec, sys.argv[2]))
"""


def test_two_processes_convert_once_and_ignore_half_written_output(tmp_path):
    from omegaconf import OmegaConf

    conf = REPO / "conf" / "pilot" / "smollm2_135m_instruct.yaml"
    spec = ModelSpec.from_config(OmegaConf.load(conf))
    target = packaged_folder_path(spec, tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half written")  # a crash left this, with no marker

    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(conf), str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    # the last line: libraries (DeepSpeed's accelerator probe) may log to stdout first
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {str(target)}
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == [target.name]
    assert packaged_folder(spec, tmp_path) == target


def test_the_readmes_python_example_runs_as_written(capsys):
    """The README's "From Python" block, executed as a user would paste it, on the embedded
    pair: it prints an answer, WSD's switch and nudging's answer."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"^\d+ (True|False)$", printed, re.MULTILINE), printed  # keep_count, switched
    assert printed.strip().splitlines()[0].strip(), printed  # the answer's first line
