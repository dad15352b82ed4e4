import json

import pytest

from eval.lm_eval_model import MethodLM
from pipelines import evaluate_tax
from tests.conftest import REPO, tiny_overrides
from wsd.methods import compose

GSM8K = REPO / "tests" / "fixtures" / "gsm8k_mini.jsonl"


def overrides(tiny_models, tmp_path, *extra):
    return tiny_overrides(tiny_models, tmp_path, "method=wsd", "tax.tasks=[wsd_gsm8k]", f"tax.gsm8k_path={GSM8K}",
                          "tax.limit=2", "tax.max_gen_toks=16", "bootstrap_resamples=200", *extra)


def test_wsd_runs_gsm8k_4_shot_through_lm_eval_and_resumes(tiny_models, tmp_path, monkeypatch):
    summary = evaluate_tax.run(compose(overrides(tiny_models, tmp_path), "evaluate_tax"))
    assert summary["method"] == "wsd" and summary["n"] == {"wsd_gsm8k": 2}
    assert summary["loglikelihood_by"] == "tiny-base"
    for key in ("wsd_gsm8k/exact_match/strict-match", "wsd_gsm8k/exact_match/flexible-extract"):
        est = summary["metrics"][key]
        assert est["n"] == 2 and est["low"] <= est["mean"] <= est["high"]
    assert summary["lm_eval_results"]["wsd_gsm8k"]["exact_match,strict-match"] == \
        summary["metrics"]["wsd_gsm8k/exact_match/strict-match"]["mean"]
    assert summary["decoding"]["prompts"] == 2 and "mean_keep_count" in summary["decoding"]
    run_dir = tmp_path / "outputs" / "evaluate_tax"
    [folder] = run_dir.iterdir()
    generations = [json.loads(line) for line in open(folder / "generations.jsonl")]
    # 4 examples, then the question: five "Question:" blocks, and lm-eval's `until` reached every model
    assert all(g["context"].count("Question:") == 5 and g["until"] == ["Question:"] for g in generations)
    [samples] = (folder / "lm_eval").glob("samples_wsd_gsm8k_*.jsonl")
    assert len(samples.read_text().splitlines()) == 4  # 2 documents x 2 filters, lm-eval's --log_samples format
    table = (tmp_path / "outputs" / "tables" / "default" / "evaluation.md").read_text()
    assert "alignment tax: wsd_gsm8k/exact_match/flexible-extract" in table.splitlines()[0]
    assert table.splitlines()[2].startswith("| wsd (w=6, γ=0.8) | ")

    monkeypatch.setattr(MethodLM, "generate_until", lambda *a, **k: pytest.fail("answers are cached per request"))
    assert evaluate_tax.run(compose(overrides(tiny_models, tmp_path), "evaluate_tax"))["metrics"] == summary["metrics"]
    again = evaluate_tax.run(compose(overrides(tiny_models, tmp_path, "force=true"), "evaluate_tax"))
    assert again["metrics"] == summary["metrics"]


def test_humaneval_and_ifeval_run_for_the_pilot(tiny_models, tmp_path):
    summary = evaluate_tax.run(compose(tiny_overrides(
        tiny_models, tmp_path, "method=pilot", "tax.tasks=[wsd_humaneval,wsd_ifeval]", "tax.limit=2",
        "tax.max_gen_toks=8", f"nltk_data_dir={tmp_path / 'nltk'}", "bootstrap_resamples=200"), "evaluate_tax"))
    assert summary["n"] == {"wsd_humaneval": 2, "wsd_ifeval": 2}
    assert summary["metrics"]["wsd_humaneval/pass@1"]["mean"] == 0.0  # a 300-token toy model writes no code
    assert {"wsd_ifeval/prompt_level_strict_acc", "wsd_ifeval/inst_level_loose_acc"} <= set(summary["metrics"])


@pytest.mark.parametrize("extra, error, message", [
    (["tax.tasks=[gsm9k]"], ValueError, "unknown tax task\\(s\\) 'gsm9k'; ours: wsd_gsm8k, wsd_humaneval, wsd_ifeval"),
    (["tax.gsm8k_path=null"], ValueError, "Pass tax.gsm8k_path=FILE"),
    (["tax.gsm8k_path=/no/such/file.jsonl"], FileNotFoundError, "/no/such/file.jsonl"),
    (["tax.limit=0"], ValueError, "tax.limit must be null or an integer >= 1, got 0"),
    (["tax.tasks=[]"], ValueError, "tax.tasks must be a non-empty list"),
    (["wsd.threshold=2"], ValueError, "threshold"),
    (["base.path=/no/such/model"], FileNotFoundError, "/no/such/model"),
    (["method=args"], ValueError, "does not run method 'args'"),
])
def test_bad_input_fails_before_models_load(tiny_models, tmp_path, monkeypatch, extra, error, message):
    monkeypatch.setattr("wsd.backends.engines.ModelPool.engines", lambda *a: pytest.fail("models were loaded"))
    with pytest.raises(error, match=message):
        evaluate_tax.run(compose(overrides(tiny_models, tmp_path, *extra), "evaluate_tax"))
