"""The report stage on real stage outputs: tests/fixtures/report/outputs holds the summaries,
records and configs that generate / evaluate / evaluate_tax wrote for experiment `fixture` on
the tiny models (jsonl and alpaca_eval; base, pilot, a WSD sweep over window x threshold and
WSD with a `trained-pilot-fixture` pilot; GSM8K tax)."""

import json
import shutil
import socket
import statistics

import pandas as pd
import pytest

from eval import reporting
from pipelines import report
from tests.conftest import REPO
from wsd.methods import compose

FIXTURE = REPO / "tests" / "fixtures" / "report" / "outputs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "outputs"
    shutil.copytree(FIXTURE, root)
    result = report.run(compose(["name=fixture", f"output_root={root}", "bootstrap_resamples=200"], "report"))
    return root, result


def records_of(root, method, **wsd):
    """Records of the generate runs on `jsonl` whose config matches (independently of the stage)."""
    import yaml

    found = []
    for config in sorted(root.glob("generate/jsonl/*/config.yaml")):
        cfg = yaml.safe_load(config.read_text())
        if cfg["method"]["name"] == method and all(cfg["wsd"][k] == v for k, v in wsd.items()) \
                and cfg["pilot"]["name"] == "tiny-pilot":
            found.append([json.loads(line) for line in (config.parent / "records.jsonl").open()])
    [records] = found
    return records


def cell_of(estimate: dict) -> str:
    return f"{estimate['mean']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}] n={estimate['n']}"


def test_main_table_has_one_column_per_paper_benchmark_and_the_rest_go_to_other_metrics(built):
    root, result = built
    folder = root / "reports" / "fixture"
    lines = (folder / "main.md").read_text().splitlines()
    assert lines[0] == "| source | method | HH-RLHF | TruthfulQA | AlpacaEval2 | Arena-Hard | MT-Bench |"
    assert "| paper (Llama-3-70B) | wsd | 96.48 | 87.88 | 20.13 | 15.90 | 7.06 |" in lines
    # our AlpacaEval cell: the fixture has no alpaca_eval win rate, so its second stand-in, named
    similarity = json.loads(next(root.glob("evaluate/alpaca_eval/base__*/reference_similarity__*/summary.json"))
                            .read_text())["metrics"]["similarity"]
    assert f"| ours (tiny-base) | base |  |  | {cell_of(similarity)}† (reference_similarity/similarity) |  |  |" in lines
    assert "offline proxy metric" in lines[-1] and "ours alpaca_eval/win_rate, else reference_similarity" in lines[-1]
    # runs with no stand-in for any paper column are not in it (only jsonl was judged for them)
    assert not any("trained-pilot-fixture" in line or "(tiny-pilot) | pilot" in line for line in lines)

    other = (folder / "other_metrics.md").read_text().splitlines()
    assert other[0] == "| benchmark | metric | source | method | mean [95% interval] n |"
    evaluation = json.loads(next(root.glob("evaluate/jsonl/base__*/harmlessness__*/summary.json")).read_text())
    offensive = evaluation["metrics"]["offensive_probability"]
    assert f"| jsonl | harmlessness/offensive_probability† | ours (tiny-base) | base | {cell_of(offensive)} |" in other
    # the figure is the judge's on the run's own responses
    from eval.judges import is_refusal

    refused = statistics.fmean(is_refusal(r["response"]) for r in records_of(root, "base"))
    refusal = next(line for line in other if line.startswith("| jsonl | harmlessness/refusal† | ours (tiny-base) | base |"))
    assert refusal.split(" | ")[-1].startswith(f"{refused:.3f} [")
    # the packaged and the trained pilot are separate rows, told apart by their models
    assert any("| ours (tiny-base, tiny-pilot pilot) | wsd (w=6, γ=0.8) |" in line for line in other)
    assert any("| ours (tiny-base, trained-pilot-fixture pilot) | wsd (w=6, γ=0.8) |" in line for line in other)
    assert not any("AlpacaEval" in line or "alpaca_eval | reference_similarity" in line for line in other)
    assert not any(count in line for line in other for count in ("instructions", "followed_strict", "followed_loose"))

    tax = (folder / "alignment_tax.md").read_text().splitlines()
    assert tax[0] == "| source | method | GSM8K | HumanEval |" and "| paper (Gemma-2-27B) | wsd | 85.52 | 65.85 |" in tax
    strict = json.loads(next(root.glob("evaluate_tax/wsd__*/summary.json")).read_text())["metrics"]
    assert any(line.startswith("| ours (tiny-base, tiny-pilot pilot) | wsd (w=6, γ=0.8) | "
                               f"{cell_of(strict['wsd_gsm8k/exact_match/strict-match'])} |") for line in tax)
    assert any("| alignment tax | wsd_gsm8k/exact_match/flexible-extract |" in line for line in other)

    for name in ("main", "other_metrics", "alignment_tax", "time", "switch", "sweep"):
        for ext in ("md", "csv", "tex"):
            assert (folder / f"{name}.{ext}").stat().st_size > 0
    assert r"\textsuperscript{\dag}" in (folder / "main.tex").read_text()
    assert list(pd.read_csv(folder / "main.csv").columns)[2:] == ["HH-RLHF", "TruthfulQA", "AlpacaEval2", "Arena-Hard",
                                                                  "MT-Bench"]
    for plot in ("main_metrics", "metric_vs_threshold", "switch_positions", "time_vs_threshold"):
        assert (folder / f"{plot}.png").stat().st_size > 1000
    index = (folder / "README.md").read_text()
    assert "[main.md](main.md)" in index and "[other_metrics.md](other_metrics.md)" in index
    assert "[main_metrics.png](main_metrics.png)" in index
    assert "secondary paper notes" in index and "jsonl: harmlessness/refusal" in index
    assert result["skipped"] == {}


def test_a_paper_column_shows_a_runs_first_stand_in_and_names_any_other(monkeypatch):
    estimate = {"low": 0.1, "high": 0.9, "n": 4, "proxy": True}
    ours = {("ours (b)", "wsd", "alpaca_eval", "alpaca_eval/win_rate"): {**estimate, "mean": 51.0},
            ("ours (b)", "wsd", "alpaca_eval", "reference_similarity/similarity"): {**estimate, "mean": 0.5},
            ("ours (b)", "base", "alpaca_eval", "reference_similarity/similarity"): {**estimate, "mean": 0.25}}
    paper = reporting.load_paper()
    table, shown = reporting.paper_vs_ours({}, ours, reporting.main_candidates(paper))
    cells = dict(zip(table["method"], table["AlpacaEval2"]))
    assert cells["wsd"].startswith("51.000 [0.100, 0.900] n=4†") and "(" not in cells["wsd"].split("n=4")[1]
    assert cells["base"] == "0.250 [0.100, 0.900] n=4† (reference_similarity/similarity)"
    assert shown == {("ours (b)", "wsd", "alpaca_eval", "alpaca_eval/win_rate"),
                     ("ours (b)", "base", "alpaca_eval", "reference_similarity/similarity")}
    # WSD's reference similarity stands in nowhere: the other metrics keep it (base's is in the main table)
    rows = [{"source": k[0], "method": k[1], "benchmark": k[2], "metric": k[3], **v} for k, v in ours.items()]
    monkeypatch.setattr(reporting, "newest_rows", lambda rows: {(r["source"], r["method"], r["benchmark"], r["metric"]): r
                                                                for r in rows})
    other = reporting.other_metrics_table(rows, shown)
    assert other[["method", "metric"]].values.tolist() == [["wsd", "reference_similarity/similarity†"]]


def test_switch_analysis_and_time_ratio_match_the_records(built):
    root, _ = built
    switch = pd.read_csv(root / "reports" / "fixture" / "switch.csv")
    for window, threshold in ((6, 0.8), (3, 0.5)):
        records = records_of(root, "wsd", window=window, threshold=threshold)
        positions = [r["keep_count"] for r in records if r["switched"]]
        row = switch[(switch.benchmark == "jsonl") & (switch.method == f"wsd (w={window}, γ={threshold})")
                     & switch.source.str.contains("tiny-pilot pilot")].iloc[0]
        assert row["responses"] == len(records) and row["switched"] == len(positions)
        assert row["never switched"] == pytest.approx(sum(not r["switched"] for r in records) / len(records))
        assert row["median"] == statistics.median(positions) and row["min"] == min(positions)
        assert row["mean position"] == pytest.approx(statistics.fmean(positions))
    never = switch[switch.benchmark == "alpaca_eval"].iloc[0]
    assert never["never switched"] == 1.0 and pd.isna(never["median"])  # no switch: no position

    time = pd.read_csv(root / "reports" / "fixture" / "time.csv")
    wsd, base = records_of(root, "wsd", window=6, threshold=0.8), records_of(root, "base")
    expected = sum(r["seconds"]["total"] for r in wsd) / sum(r["seconds"]["total"] for r in base)
    row = time[(time.benchmark == "jsonl") & (time.method == "wsd (w=6, γ=0.8)")
               & time.source.str.contains("tiny-pilot pilot")].iloc[0]
    assert row["time / base alone (x)"].startswith(f"{expected:.3f} [") and row["draft cache hits"] == "0%"
    assert set(time[time.source == "paper (Llama-3-70B)"]["time / base alone (x)"]) == {"0.84", "2.25", "3.23"}

    sweep = pd.read_csv(root / "reports" / "fixture" / "sweep.csv")
    points = sweep[(sweep.benchmark == "jsonl") & sweep.source.str.contains("tiny-pilot pilot")]
    assert sorted(zip(points.window, points.threshold)) == [(3, 0.5), (3, 0.8), (6, 0.5), (6, 0.8)]
    assert points["harmlessness/refusal†"].str.contains("n=6").all()


def test_a_run_timed_as_one_batch_gets_no_interval(tmp_path):
    """Five prompts decoded in one batch share its time: one measurement, whatever the base's
    per-prompt times; two batches of the method are resampled whole."""
    settings = {"max_new_tokens": 8}
    run = {"method": "wsd", "models": {"pilot": "p", "base": "b"}, "wsd": {"window": 6, "threshold": 0.8}}

    def generation(method, seconds, batches):
        records = [{"id": f"q{i}", "seconds": {"total": t}, "batch": f"q{b}"}
                   for i, (t, b) in enumerate(zip(seconds, batches))]
        return reporting.GenerationRun(tmp_path / method, {**run, "method": method}, "jsonl", settings, records)

    base = generation("base", [1.0, 2.0, 1.5, 1.0, 2.5], range(5))  # one prompt a batch
    one = generation("wsd", [2.0] * 5, [0] * 5)
    two = generation("wsd2", [2.0, 2.0, 2.0, 1.0, 1.0], [0, 0, 0, 3, 3])
    ratios = reporting.time_ratios([base, one, two], 200, 0)
    assert ratios[one.folder]["estimate"] == {"mean": pytest.approx(10 / 8), "low": None, "high": None, "n": 5}
    split = ratios[two.folder]["estimate"]
    assert split["mean"] == pytest.approx(8 / 8) and split["low"] < split["mean"] < split["high"]
    assert reporting.timed_together([base, two], [f"q{i}" for i in range(5)]) == [0, 0, 0, 1, 1]


def test_wandb_report_definition_builds_offline(built, monkeypatch):
    root, result = built

    def no_network(*args, **kwargs):
        raise AssertionError("building the report definition touched the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    again = report.run(compose(["name=fixture", f"output_root={root}", "bootstrap_resamples=200"], "report"))
    spec = json.loads((root / "reports" / "fixture" / "wandb_report.json").read_text())
    assert again["wandb_report"] == result["wandb_report"] and spec["type"] == "Report" and spec["project"] == "wsd"
    grids = [b for b in spec["blocks"] if b["type"] == "PanelGrid"]
    filters = [rs["filters"] for g in grids for rs in g["runsets"]]
    assert filters and all("Metric(\"Group\") == 'fixture'" in f for f in filters)
    panels = [p for g in grids for p in g["panels"]]
    bars = {p["metrics"][0]["name"] for p in panels if p["type"] == "BarPlot"}
    assert {"refusal/mean", "similarity/mean", "wsd_gsm8k/exact_match/strict-match/mean", "switched_share"} <= bars
    assert any(p["type"] == "ScatterPlot" and p["x"]["name"] == "wsd.threshold" for p in panels)
    assert any(p["type"] == "RunComparer" for p in panels)


def test_an_experiment_without_results_names_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results for experiment 'nothing'.*python -m pipelines.generate"):
        report.run(compose(["name=nothing", f"output_root={tmp_path}"], "report"))


def test_the_tables_are_those_the_report_wrote_before_the_library_moved_out(built):
    """tests/fixtures/report/expected: every table the report stage wrote from this fixture at
    commit 502902a, before the stages' library code moved into wsd/ and eval/; the sweep table
    since it took the settings study's forced switches (a `switch` and a `mean k` column) and
    dropped columns empty in every row."""
    root, _ = built
    expected = REPO / "tests" / "fixtures" / "report" / "expected"
    for path in sorted(expected.iterdir()):
        assert (root / "reports" / "fixture" / path.name).read_text() == path.read_text(), path.name
