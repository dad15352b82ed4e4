"""Report stage: the paper's tables with ours beside them, plots, and a W&B Report, from
everything the generate, evaluate and evaluate_tax stages left on disk for one experiment
(`eval.reporting`), written to `outputs/reports/<experiment>/`. It runs no model, so it can
be rerun after every stage.

    python -m pipelines.report experiment=mini
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from eval.reporting import (
    OURS_NOTE,
    PROXY_NOTE,
    SWITCH_NOTE,
    TABLES,
    TIME_NOTE,
    generation_runs,
    index_text,
    load_paper,
    main_table,
    other_metrics_table,
    plot_main_metrics,
    plot_metric_vs_threshold,
    plot_switch_histogram,
    plot_time_vs_threshold,
    publish_report,
    sweep_table,
    switch_table,
    tax_table,
    time_ratios,
    time_table,
    write_table,
)
from eval.results import evaluation_rows
from pipelines import multirun_flag_first
from wsd.analysis.tables import experiment_analyses, premise_lines
from wsd.core.store import write_atomic


def run(cfg: DictConfig) -> dict:
    """Read every result of experiment `cfg.name`, write the tables, plots, W&B report and an index."""
    root, experiment = Path(cfg.output_root), cfg.name
    rows = evaluation_rows(root, experiment)
    generations = generation_runs(root, experiment, {Path(r["generation"]).name for r in rows if r.get("generation")})
    analyses = experiment_analyses(root, experiment)
    if not rows and not generations and not analyses:
        raise FileNotFoundError(
            f"no results for experiment {experiment!r} under {root}: run `python -m pipelines.generate "
            f"name={experiment}` (or experiment=...), then `python -m pipelines.evaluate` / "
            "`python -m pipelines.evaluate_tax` with the same overrides first")
    folder = Path(cfg.report.dir)
    folder.mkdir(parents=True, exist_ok=True)
    paper = load_paper()
    ratios = time_ratios(generations, cfg.bootstrap_resamples, cfg.seed)
    main, tax = main_table(paper, rows), tax_table(paper, rows)
    shown = (main[1] if main else set()) | (tax[1] if tax else set())
    notes = {"main": f"{main[2] if main else ''} {OURS_NOTE} {PROXY_NOTE}",
             "alignment_tax": f"{tax[2] if tax else ''} {OURS_NOTE}", "other_metrics": f"{OURS_NOTE} {PROXY_NOTE}",
             "time": TIME_NOTE, "switch": SWITCH_NOTE, "sweep": f"{OURS_NOTE} {PROXY_NOTE}"}
    frames = {"main": main[0] if main else None, "alignment_tax": tax[0] if tax else None,
              "other_metrics": other_metrics_table(rows, shown),
              "time": time_table(paper, generations, ratios), "switch": switch_table(generations),
              "sweep": sweep_table(generations, rows, ratios)}
    reasons = {"main": "no evaluate-stage summary (python -m pipelines.evaluate)",
               "alignment_tax": "no alignment-tax summary (python -m pipelines.evaluate_tax)",
               "other_metrics": "no metric of ours beyond the paper's columns",
               "time": "no base-model run on the same benchmark and generation settings as another method",
               "switch": "no WSD generate run", "sweep": "no WSD generate run"}
    tables = {name: write_table(folder, name, df, f"{TABLES[name]}. {notes[name]}")
              for name, df in frames.items() if df is not None}
    plots = {"main_metrics": plot_main_metrics(folder / "main_metrics.png", paper, rows),
             "metric_vs_threshold": plot_metric_vs_threshold(folder / "metric_vs_threshold.png", generations, rows),
             "switch_positions": plot_switch_histogram(folder / "switch_positions.png", generations),
             "time_vs_threshold": plot_time_vs_threshold(folder / "time_vs_threshold.png", generations, ratios)}
    skipped = {name: reasons[name] for name, df in frames.items() if df is None}
    plot_reasons = {"main_metrics": "no run of ours in the main table",
                    "switch_positions": "no WSD run, or no WSD response switched"}
    skipped.update({name: plot_reasons.get(name, "fewer than two WSD thresholds with data")
                    for name, path in plots.items() if path is None})
    analysed = copy_analyses(analyses, folder)
    wandb = publish_report(cfg, rows, folder)
    proxies = sorted({f"{r['benchmark']}: {r['metric']}" for r in rows if r["proxy"]})
    index = folder / "README.md"
    write_atomic(index, index_text(experiment, tables, {k: v for k, v in plots.items() if v}, skipped, proxies, wandb,
                                   paper["citation"], analysed))
    return {"experiment": experiment, "dir": str(folder), "index": str(index),
            "tables": {name: {ext: str(p) for ext, p in paths.items()} for name, paths in tables.items()},
            "plots": {k: str(v) for k, v in plots.items() if v}, "analyses": analysed, "skipped": skipped, **wandb}


def copy_analyses(analyses: list[dict], folder: Path) -> list[dict]:
    """Each benchmark's newest analyses (table and figure) copied beside the report's tables,
    with its premise verdicts for the index."""
    newest = {a["benchmark"]: a for a in analyses}
    copied = []
    for benchmark, summary in newest.items():
        source = Path(summary["identity"]["folder"])
        entry = {"benchmark": benchmark, "verdicts": premise_lines(summary)}
        for kind, ext in (("table", "md"), ("figure", "png")):
            if (source / f"analyses.{ext}").exists():
                target = folder / f"analyses_{benchmark}.{ext}"
                target.write_bytes((source / f"analyses.{ext}").read_bytes())
                entry[kind] = str(target)
        copied.append(entry)
    return copied


@hydra.main(config_path="../conf", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(f"report of experiment {result['experiment']!r}: {result['index']}")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"W&B report: {result['wandb_report']}")
    if result.get("wandb_sync"):
        print(f"upload the offline runs: {result['wandb_sync']}")


if __name__ == "__main__":
    multirun_flag_first()
    main()
