"""The report's parts: the paper's tables with ours beside them (markdown, CSV, LaTeX), the
plots, and the W&B Report, from what the generate, evaluate and evaluate_tax stages left on
disk for one experiment."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from eval.results import PROXY_MARK, estimate_cell, markdown_table, run_label
from eval.stats import bootstrap_ratio
from wsd.core.store import RunRecords, write_atomic
from wsd.runs.identity import run_description

log = logging.getLogger("wsd.report")

PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.yaml"
TAX = "alignment tax"  # the benchmark name eval.results gives alignment-tax rows
PROXY_NOTE = f"{PROXY_MARK} offline proxy metric: not the paper's judge, not comparable to the paper's number."
OURS_NOTE = ("Our cells: mean [bootstrap 95% interval] n, on each metric's own scale (win rates from alpaca_eval and "
             "Arena-Hard in %, MT-Bench ratings 1-10, other rates and accuracies as fractions 0-1). "
             "Our benchmarks, models and judges differ from the paper's: compare directions, not levels.")


@dataclasses.dataclass
class GenerationRun:
    """One finished generate-stage run: what it was, its summary and its records in benchmark order."""

    folder: Path
    run: dict
    benchmark: str
    settings: dict  # the config's `generation` block: runs are compared only under equal settings
    records: list[dict]
    backend: str = "hf"  # and on the same backend

    @property
    def source(self) -> str:
        return ours_source(self.run)

    @property
    def label(self) -> str:
        return run_label(self.run)


def ours_source(run: dict) -> str:
    """`ours (gemma-3-270m, SmolLM2-135M-Instruct pilot)`: which models a row of ours used."""
    models = run["models"]
    pilot = f", {models['pilot']} pilot" if "pilot" in models and "base" in models else ""
    return f"ours ({models.get('base') or models.get('pilot')}{pilot})"


def paper_source(base_model: str) -> str:
    return f"paper ({base_model})"


def load_paper() -> dict:
    return yaml.safe_load(PAPER_RESULTS.read_text())


def generation_runs(output_root: Path, experiment: str, evaluated: set[str]) -> list[GenerationRun]:
    """The experiment's generate runs: those whose config names it, and those its evaluations
    scored (a folder is shared by experiments with identical settings)."""
    runs = []
    for path in sorted(output_root.glob("generate/*/*/summary.json")):
        folder = path.parent
        cfg = OmegaConf.load(folder / "config.yaml")
        if cfg.name != experiment and folder.name not in evaluated:
            continue
        summary = json.loads(path.read_text())
        done = RunRecords(folder).done()
        runs.append(GenerationRun(folder, {**run_description(cfg), "experiment": experiment},
                               summary["benchmark"], OmegaConf.to_container(cfg.generation, resolve=True),
                               [done[i] for i in summary["ids"] if i in done],
                               cfg.backend.name if "backend" in cfg else "hf"))
    return runs


# ---------------------------------------------------------------------------------------
# Tables


def newest_rows(rows: list[dict]) -> dict[tuple, dict]:
    """(source, method label, benchmark, metric) -> its row; where one of our metrics was
    computed twice (a larger limit later), the newest summary wins."""
    newest = {}
    for row in sorted(rows, key=lambda r: r["mtime"]):
        newest[(ours_source(row["run"]), run_label(row["run"]), row["benchmark"], row["metric"])] = row
    return newest


def stand_ins(ours: dict[tuple, dict], candidates: dict) -> dict[tuple, dict]:
    """(source, method) -> paper column -> the first of our (benchmark, metric) pairs standing
    for that column (`candidates[column]`, in order of preference) that the run has."""
    found: dict[tuple, dict] = {}
    for run in sorted({key[:2] for key in ours}):
        for column, pairs in candidates.items():
            pair = next((p for p in pairs if (*run, *p) in ours), None)
            if pair is not None:
                found.setdefault(run, {})[column] = pair
    return found


def paper_vs_ours(paper: dict, ours: dict[tuple, dict], candidates: dict) -> tuple[pd.DataFrame, set]:
    """The paper's table as the paper lays it out, one column per paper column: the paper's
    rows with its numbers, ours with their stand-in for each column (a cell from another than
    the column's first choice names its metric). Returns the table and the pairs it showed;
    our runs with no stand-in are left out (the other-metrics table has them). A pair shown is
    (source, method, benchmark, metric): a metric one run stands in with (reference similarity
    for the runs AlpacaEval 2's annotator did not judge) stays in other runs' other metrics."""
    table = [{"source": paper_source(base), "method": method, **{c: f"{v:.2f}" for c, v in values.items()}}
             for base, methods in paper.items() for method, values in methods.items()]
    shown = set()
    for (source, method), pairs in stand_ins(ours, candidates).items():
        cells = {}
        for column, pair in pairs.items():
            row = ours[(source, method, *pair)]
            named = f" ({pair[1]})" if pair != candidates[column][0] else ""
            cells[column] = f"{estimate_cell(row)}{PROXY_MARK if row['proxy'] else ''}{named}"
            shown.add((source, method, *pair))
        table.append({"source": source, "method": method, **cells})
    return pd.DataFrame(table, columns=["source", "method", *candidates]).fillna(""), shown


def main_candidates(paper: dict) -> dict[str, list[tuple[str, str]]]:
    """Paper column -> our (benchmark, metric) pairs that stand for it, in order of preference."""
    return {column: [(about["ours"], metric) for metric in about["ours_metrics"]]
            for column, about in paper["benchmarks"].items()}


def tax_candidates(paper: dict) -> dict[str, list[tuple[str, str]]]:
    return {column: [(TAX, metric) for metric in about["ours_metrics"]] for column, about in paper["tax_tasks"].items()}


def column_note(columns: dict, candidates: dict) -> str:
    """What each column holds: the paper's metric, and ours in order of preference."""
    return " ".join(f"{column}: paper {about['metric']}; ours {', else '.join(m for _, m in candidates[column])}."
                    for column, about in columns.items())


def main_table(paper: dict, rows: list[dict]) -> tuple[pd.DataFrame, set, str] | None:
    """Preference benchmarks x methods per base model (the paper's main table)."""
    ours = newest_rows([r for r in rows if r["benchmark"] != TAX])
    if not ours:
        return None
    candidates = main_candidates(paper)
    return (*paper_vs_ours(paper["main"], ours, candidates),
            column_note(paper["benchmarks"], candidates))


def tax_table(paper: dict, rows: list[dict]) -> tuple[pd.DataFrame, set, str] | None:
    """GSM8K / HumanEval before and after alignment (the tax stage's other tasks: other metrics)."""
    ours = newest_rows([r for r in rows if r["benchmark"] == TAX])
    if not ours:
        return None
    candidates = tax_candidates(paper)
    return (*paper_vs_ours(paper["tax"], ours, candidates),
            column_note(paper["tax_tasks"], candidates))


def other_metrics_table(rows: list[dict], shown: set) -> pd.DataFrame | None:
    """Every metric of ours the paper's tables do not show, one line per (metric, run)."""
    ours = newest_rows(rows)
    lines = [{"benchmark": benchmark, "metric": f"{metric}{PROXY_MARK if row['proxy'] else ''}", "source": source,
              "method": method, "mean [95% interval] n": estimate_cell(row)}
             for (source, method, benchmark, metric), row in sorted(ours.items(), key=lambda kv: (kv[0][2:], kv[0][:2]))
             if (source, method, benchmark, metric) not in shown]
    return pd.DataFrame(lines) if lines else None


def seconds(generation: GenerationRun) -> dict[str, float]:
    return {r["id"]: r["seconds"]["total"] for r in generation.records}


def timed_together(generations: list[GenerationRun], ids: list[str]) -> list[int]:
    """A cluster label per id: prompts that shared a batch's time in any of these runs are one
    measurement, not several (records name their `batch`; older ones count as their own)."""
    parent = {i: i for i in ids}

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for g in generations:
        first_of = {}
        for r in g.records:
            if r["id"] in parent:
                batch = r.get("batch", r["id"])
                parent[root(r["id"])] = root(first_of.setdefault(batch, r["id"]))
    labels = {}
    return [labels.setdefault(root(i), len(labels)) for i in ids]


def time_ratios(generations: list[GenerationRun], resamples: int, seed: int) -> dict[Path, dict]:
    """Per run (any method but `base`): its decoding time over the base model's alone on the
    same benchmark, prompts, base model, backend and generation settings, as a ratio of summed
    per-record seconds with prompts resampled in pairs, and prompts that shared a batch's time
    resampled together (`timed_together`)."""
    bases = [g for g in generations if g.run["method"] == "base"]
    out = {}
    for g in generations:
        pair = [b for b in bases if g.run["method"] != "base" and b.benchmark == g.benchmark
                and b.run["models"]["base"] == g.run["models"].get("base") and b.settings == g.settings
                and b.backend == g.backend]
        if not pair:
            continue
        ours, base = seconds(g), seconds(pair[-1])
        common = [i for i in ours if i in base]
        if not common:
            continue
        est = bootstrap_ratio([ours[i] for i in common], [base[i] for i in common], resamples, seed,
                              clusters=timed_together([g, pair[-1]], common))
        cached = [r.get("draft_cache_hit", False) for r in g.records if r["id"] in base]
        reward = [r["seconds"]["reward"] for r in g.records if r["id"] in base and "reward" in r["seconds"]]
        out[g.folder] = {"estimate": est.as_dict(), "seconds_per_prompt": sum(ours[i] for i in common) / len(common),
                         "reward_seconds_per_prompt": sum(reward) / len(reward) if reward else None,
                         "base_seconds_per_prompt": sum(base[i] for i in common) / len(common),
                         "draft_cache_hits": sum(cached) / len(cached)}
    return out


def time_table(paper: dict, generations: list[GenerationRun], ratios: dict[Path, dict]) -> pd.DataFrame | None:
    if not ratios:
        return None
    rows = [{"source": paper_source(base), "method": method, "time / base alone (x)": f"{ratio:.2f}"}
            for base, methods in paper["time_ratio"].items() for method, ratio in methods.items()]
    for g in generations:
        if g.folder in ratios:
            r = ratios[g.folder]
            rows.append({"source": g.source, "method": g.label, "benchmark": g.benchmark, "backend": g.backend,
                         "time / base alone (x)": estimate_cell(r["estimate"]),
                         "seconds per prompt": f"{r['seconds_per_prompt']:.2f}",
                         "base seconds per prompt": f"{r['base_seconds_per_prompt']:.2f}",
                         "of which reward model": "" if r["reward_seconds_per_prompt"] is None
                         else f"{r['reward_seconds_per_prompt']:.2f}",
                         "draft cache hits": f"{r['draft_cache_hits']:.0%}"})
    return pd.DataFrame(rows).fillna("")


def switch_positions(g: GenerationRun) -> list[int]:
    """Kept draft tokens (base tokenization) of the responses that switched: position i + 1."""
    return [r["keep_count"] for r in g.records if r["switched"]]


def switch_table(generations: list[GenerationRun]) -> pd.DataFrame | None:
    """Where WSD hands over, per run: quantiles of the switch position and the share of
    responses whose pilot draft never reached the threshold (kept whole)."""
    rows = []
    for g in generations:
        if not g.run["wsd"] or not g.records:
            continue
        positions = switch_positions(g)
        quantiles = np.percentile(positions, [0, 25, 50, 75, 100]) if positions else [None] * 5
        rows.append({"source": g.source, "method": g.label, "benchmark": g.benchmark, "responses": len(g.records),
                     "never switched": 1 - len(positions) / len(g.records),
                     "switched": len(positions), "mean position": np.mean(positions) if positions else None,
                     **dict(zip(("min", "p25", "median", "p75", "max"), quantiles))})
    return pd.DataFrame(rows) if rows else None


def sweep_table(generations: list[GenerationRun], rows: list[dict], ratios: dict[Path, dict]) -> pd.DataFrame | None:
    """One row per WSD run: (window, threshold) points of the auto-switch and the settings
    study's forced switches, with their metrics, relative time, switch share and mean k."""
    wsd = [g for g in generations if g.run["wsd"]]
    if not wsd:
        return None
    scored: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r["mtime"]):
        if row["benchmark"] != TAX and row.get("generation"):
            name = f"{row['metric']}{PROXY_MARK if row['proxy'] else ''}"
            scored.setdefault((row["benchmark"], Path(row["generation"]).name), {})[name] = estimate_cell(row)
    table = []
    for g in sorted(wsd, key=lambda g: (g.benchmark, g.source, _switch_order(g.run["wsd"]), g.run["wsd"]["window"],
                                        g.run["wsd"]["threshold"])):
        ratio = ratios.get(g.folder)
        forced = g.run["wsd"].get("force_keep")
        table.append({"source": g.source, "benchmark": g.benchmark,
                      "switch": "auto" if forced is None else f"forced at k={forced}",
                      "window": "" if forced is not None else g.run["wsd"]["window"],
                      "threshold": "" if forced is not None else g.run["wsd"]["threshold"],
                      "draft_max_tokens": g.run["wsd"]["draft_max_tokens"],
                      "switched share": np.mean([r["switched"] for r in g.records]) if g.records else None,
                      "mean k": np.mean([r["keep_count"] for r in g.records]) if g.records else None,
                      "time / base alone (x)": estimate_cell(ratio["estimate"]) if ratio else "",
                      **scored.get((g.benchmark, g.folder.name), {})})
    frame = pd.DataFrame(table).fillna("")
    return frame.loc[:, [c for c in frame.columns if (frame[c] != "").any()]]  # no column empty in every row


def _switch_order(wsd: dict) -> tuple:
    """The auto-switch first, then forced switches by k, the whole draft last."""
    forced = wsd.get("force_keep")
    return (0, 0) if forced is None else (1, forced) if isinstance(forced, int) else (2, 0)


# ---------------------------------------------------------------------------------------
# Writing


def latex(df: pd.DataFrame, caption: str) -> str:
    """pandas' LaTeX (booktabs) with our marks spelled for pdflatex."""
    text = df.to_latex(index=False, escape=True, caption=caption, float_format="%.3f", na_rep="")
    for mark, spelled in ((PROXY_MARK, r"\textsuperscript{\dag}"), ("γ", r"$\gamma$"), ("→", r"$\to$"),
                          ("·", r"$\cdot$")):
        text = text.replace(mark, spelled)
    return text


def write_table(folder: Path, name: str, df: pd.DataFrame, note: str) -> dict[str, Path]:
    """`<name>.md` (with its note), `<name>.csv` and `<name>.tex` (the note as caption)."""
    shown = df.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                   else f"{v:.3f}" if isinstance(v, float) else str(v))
    paths = {ext: folder / f"{name}.{ext}" for ext in ("md", "csv", "tex")}
    write_atomic(paths["md"], markdown_table(list(df.columns), shown.values.tolist(), note))
    write_atomic(paths["csv"], df.to_csv(index=False))
    write_atomic(paths["tex"], latex(df, note))
    return paths


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display): every figure of the report and the analyses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_window(points: list[tuple]) -> dict:
    """(line key, threshold, value...) points -> line key -> points sorted by threshold."""
    lines: dict = {}
    for key, *point in sorted(points, key=lambda p: (str(p[0]), p[1])):
        lines.setdefault(key, []).append(point)
    return lines


def plot_metric_vs_threshold(path: Path, generations: list[GenerationRun], rows: list[dict]) -> Path | None:
    """One panel per (benchmark, metric) evaluated at two or more thresholds; a line per window
    (and pilot), the bootstrap interval as error bars."""
    wsd = {(g.benchmark, g.folder.name): g for g in generations
           if g.run["wsd"] and g.run["wsd"].get("force_keep") is None}
    panels: dict[str, list] = {}
    for row in rows:
        g = wsd.get((row["benchmark"], Path(row.get("generation") or "").name))
        if g is not None:
            title = f"{row['benchmark']}: {row['metric']}{PROXY_MARK if row['proxy'] else ''}"
            key = f"w={g.run['wsd']['window']} · {g.source}"
            panels.setdefault(title, []).append((key, g.run["wsd"]["threshold"], row["mean"], row["low"], row["high"]))
    panels = {t: [x for x in p if len({y[1] for y in p if y[0] == x[0]}) > 1] for t, p in panels.items()}
    panels = {t: p for t, p in panels.items() if p}  # lines along two or more thresholds only
    if not panels:
        return None
    plt = pyplot()
    columns = min(3, len(panels))
    rows_needed = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_needed, columns, figsize=(5.5 * columns, 4 * rows_needed), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    for ax, (title, points) in zip(axes.flat, sorted(panels.items())):
        for key, line in _by_window(points).items():
            x, y, low, high = map(np.array, zip(*line))
            ax.errorbar(x, y, yerr=[y - low, high - y], marker="o", capsize=3, label=key)
        ax.set(title=title, xlabel="threshold γ", ylabel="mean (95% interval)")
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_time_vs_threshold(path: Path, generations: list[GenerationRun], ratios: dict[Path, dict]) -> Path | None:
    """Relative time along the threshold, one line per swept series (benchmark, window,
    models) with two or more thresholds: runs at one setting (every other benchmark of
    `make reproduce`) are no line. The legend sits below the axes."""
    points = [(f"{g.benchmark} · w={g.run['wsd']['window']} · {g.source}", g.run["wsd"]["threshold"],
               ratios[g.folder]["estimate"]["mean"]) for g in generations
              if g.run["wsd"] and g.run["wsd"].get("force_keep") is None and g.folder in ratios]
    lines = {key: line for key, line in _by_window(points).items() if len({x for x, _ in line}) > 1}
    if not lines:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4 + 0.25 * len(lines)))
    for key, line in lines.items():
        ax.plot(*zip(*line), marker="o", label=key)
    ax.axhline(1.0, color="grey", linestyle=":", label="base model alone")
    ax.set(title="decoding time relative to the base model alone", xlabel="threshold γ", ylabel="time / base (x)")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_main_metrics(path: Path, paper: dict, rows: list[dict]) -> Path | None:
    """Every measure of ours that stands for a paper column (each of its candidates the runs
    have, not only the first), as bars with their 95% intervals: one panel per measure (they
    are on different scales), proxies marked, the methods in the same order in every panel."""
    ours = newest_rows([r for r in rows if r["benchmark"] != TAX])
    measures = [(column, pair) for column, pairs in main_candidates(paper).items() for pair in pairs]
    runs = [run for run in sorted({key[:2] for key in ours})
            if any((*run, *pair) in ours for _, pair in measures)]  # one y axis shared by every panel
    panels: dict[str, list] = {}
    for column, pair in measures:
        found = {i: ours[(*run, *pair)] for i, run in enumerate(runs) if (*run, *pair) in ours}
        if found:
            proxy = PROXY_MARK if any(r["proxy"] for r in found.values()) else ""
            panels[f"{column}: {pair[1]}{proxy}"] = found
    if not panels:
        return None
    labels = [f"{method} · {source}" for source, method in runs]
    plt = pyplot()
    columns = min(3, len(panels))
    rows_needed = -(-len(panels) // columns)
    height = len(runs) * 0.3 + 1.4
    fig, axes = plt.subplots(rows_needed, columns, figsize=(5.5 * columns, height * rows_needed), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    for i, (ax, (title, found)) in enumerate(zip(axes.flat, panels.items())):
        at, cells = list(found), list(found.values())
        spread = [[r["mean"] - r["low"] if r.get("low") is not None else 0 for r in cells],
                  [r["high"] - r["mean"] if r.get("high") is not None else 0 for r in cells]]
        ax.barh(at, [r["mean"] for r in cells], xerr=spread, capsize=3, color="tab:blue", alpha=0.7)
        ax.set_yticks(range(len(runs)), labels if i % columns == 0 else [""] * len(runs), fontsize="x-small")
        ax.set_ylim(len(runs) - 0.5, -0.5)  # the first run on top, the same rows in every panel
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("mean (95% interval)", fontsize="small")
    fig.suptitle(f"Measures standing for the paper's columns ({PROXY_MARK}: offline proxy)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_switch_histogram(path: Path, generations: list[GenerationRun]) -> Path | None:
    """Switch positions as small multiples: one panel per WSD run (benchmark, settings and
    models in its title), a shared x axis, no legend over the data."""
    runs = [(f"{g.benchmark} · {g.label}\n{g.source}", switch_positions(g), len(g.records))
            for g in sorted(generations, key=lambda g: (g.benchmark, g.label, g.source)) if g.run["wsd"]]
    runs = [run for run in runs if run[1]]
    if not runs:
        return None
    plt = pyplot()
    columns = min(3, len(runs))
    rows_needed = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows_needed, columns, figsize=(4.5 * columns, 2.8 * rows_needed), squeeze=False,
                             sharex=True)
    for ax in axes.flat[len(runs):]:
        ax.remove()
    top = max(max(p) for _, p, _ in runs)
    for ax, (title, positions, responses) in zip(axes.flat, runs):
        ax.hist(positions, bins=np.linspace(0.5, top + 0.5, min(30, top) + 1), color="tab:gray")
        ax.set_title(f"{title} ({len(positions)} of {responses} switched)", fontsize="x-small")
        ax.set_ylabel("responses", fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("kept draft tokens k", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# W&B Report


def wandb_metric_keys(rows: list[dict]) -> dict[str, list[str]]:
    """The run-summary keys the evaluate (`<metric>/mean`) and tax stages logged, per stage."""
    keys = {"evaluate": [], "evaluate_tax": []}
    for row in rows:
        stage, metric = ("evaluate_tax", row["metric"]) if row["benchmark"] == TAX else \
            ("evaluate", row["metric"].partition("/")[2])
        keys[stage].append(f"{metric}/mean")
    return {stage: list(dict.fromkeys(k)) for stage, k in keys.items()}


RUN_COLUMNS = ["run:displayName", "config:benchmark.name.value", "config:method.name.value",
               "config:pilot.name.value", "config:base.name.value", "config:wsd.window.value",
               "config:wsd.threshold.value"]
GENERATE_KEYS = ["mean_seconds", "tokens_per_second", "switched_share", "mean_keep_count"]


def wandb_report(cfg: DictConfig, rows: list[dict]):
    """A W&B Report comparing the experiment's methods and sweep points: per stage a runset of
    the experiment's W&B group (runs table) with bar plots of its summary metrics, metric vs
    threshold scatter plots, and a run comparer. Building it makes no API call (entity given)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    entity, project = cfg.logger.get("entity") or "", cfg.logger.get("project", "wsd")  # logger=none has neither
    keys = {"generate": GENERATE_KEYS, **wandb_metric_keys(rows)}
    blocks = [wr.H1(f"Experiment {cfg.name}"),
              wr.P("Methods (base, baselines, WSD with each pilot) and WSD sweep points (window, threshold) "
                   f"of the W&B group {cfg.name!r}. Metrics marked as proxies in the Markdown report are offline "
                   "stand-ins for the paper's judges; the paper's own numbers are in the report's tables.")]
    for stage, metrics in keys.items():
        if not metrics:
            continue
        runset = wr.Runset(entity=entity, project=project, name=f"{cfg.name} {stage}",
                           filters=expr.And(expr.Metric("Group") == cfg.name, expr.Metric("JobType") == stage),
                           pinned_columns=RUN_COLUMNS + [f"summary:{m}" for m in metrics])
        panels = [wr.BarPlot(title=m, metrics=[wr.SummaryMetric(m)], orientation="h") for m in metrics]
        panels += [wr.ScatterPlot(title=f"{m} vs threshold", x=wr.Config("wsd.threshold"), y=wr.SummaryMetric(m))
                   for m in metrics]
        panels.append(wr.RunComparer(diff_only="split"))
        blocks += [wr.H2(stage), wr.PanelGrid(runsets=[runset], panels=panels)]
    return wr.Report(project=project, entity=entity, title=cfg.report.wandb_title[:128],
                     description=f"Weak-to-Strong Decoding: methods and sweep points of experiment {cfg.name}",
                     blocks=blocks)


def definition(value):
    """The report as plain JSON: every block, panel and metric with its type name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: definition(getattr(value, f.name))
                                                 for f in dataclasses.fields(value) if not f.name.startswith("_")}}
    if isinstance(value, (list, tuple)):
        return [definition(v) for v in value]
    if isinstance(value, dict):
        return {str(k): definition(v) for k, v in value.items()}
    return value


def publish_report(cfg: DictConfig, rows: list[dict], folder: Path) -> dict:
    """Save the report to W&B when online with an entity; otherwise write its definition and
    say how to upload the offline runs it shows."""
    report = wandb_report(cfg, rows)
    online = cfg.logger.name == "wandb" and cfg.logger.mode == "online" and cfg.logger.get("entity")
    if online:
        report.save()
        return {"wandb_report": report.url}
    path = folder / "wandb_report.json"
    write_atomic(path, json.dumps(definition(report), indent=1, default=str))
    offline = sorted((Path(cfg.logger.dir) / "wandb").glob("offline-run-*")) if cfg.logger.name == "wandb" else []
    sync = f"wandb sync {Path(cfg.logger.dir) / 'wandb'}/offline-run-*" if offline else None
    return {"wandb_report": str(path), "wandb_sync": sync, "offline_runs": len(offline)}


# ---------------------------------------------------------------------------------------
# The stage


TABLES = {
    "main": "Preference benchmarks: the paper's numbers and ours, one column per benchmark",
    "alignment_tax": "Alignment tax: the paper's GSM8K / HumanEval and ours",
    "other_metrics": "Our other metrics: those the paper's tables have no column for",
    "time": "Decoding time relative to the base model alone",
    "switch": "Where WSD switches from the pilot to the base model",
    "sweep": ("WSD runs side by side: the auto-switch at each (window, threshold) and the switch forced at k "
              "(the settings study)"),
}
TIME_NOTE = ("Ours: sum over the prompts both runs decoded of each record's `seconds.total` (its share of its "
             "batch's wall time), this run over the base model alone on the same benchmark, base model, backend and "
             "generation settings; mean [bootstrap 95% interval] n, prompts that shared a batch's time resampled "
             "together (one batch: one measurement, no interval). Runs with draft cache hits "
             "reused drafts and base probabilities of an earlier sweep point, so they under-count drafting. "
             f"ARGS, CARDS and best-of-N include their reward model's time (its share in its own column); "
             f"[proxy reward model{PROXY_MARK}]: steered by a small reward model trained offline on GenerAlign-mini, "
             "weak, so their time is comparable and their quality is not the paper's.")
SWITCH_NOTE = ("Position = kept draft tokens k (base tokenization; the switch is at draft token k - 1), over "
               "the responses that switched; `never switched` responses kept their whole draft.")


def index_text(experiment: str, tables: dict, plots: dict, skipped: dict, proxies: list[str], wandb: dict,
               citation: str, analyses: list[dict] = ()) -> str:
    lines = [f"# Report: experiment `{experiment}`", "",
             f"Rows whose `source` starts with `paper` are the paper's numbers ({citation}; "
             "`eval/paper_results.yaml`). Rows starting with `ours` are ours, with their base model and pilot; "
             "our metrics are mean [bootstrap 95% interval] n.", "",
             f"Offline proxy metrics (marked {PROXY_MARK} in every table): "
             + (", ".join(proxies) if proxies else "none") + ".", "", "## Tables", ""]
    lines += [f"- {TABLES[name]}: [{name}.md]({name}.md), [{name}.csv]({name}.csv), [{name}.tex]({name}.tex)"
              for name in tables]
    lines += ["", "## Plots", "", *(f"- [{Path(p).name}]({Path(p).name})" for p in plots.values())]
    if analyses:
        lines += ["", "## Analyses (likelihoods: real numbers, no judge)", ""]
        for a in analyses:
            links = ", ".join(f"[{Path(a[k]).name}]({Path(a[k]).name})" for k in ("table", "figure") if a.get(k))
            lines += [f"- {a['benchmark']}: {links}", *(f"  - {line}" for line in a["verdicts"])]
    if skipped:
        lines += ["", "## Skipped (no data)", "", *(f"- {name}: {why}" for name, why in skipped.items())]
    lines += ["", "## W&B", "", f"- Report: {wandb['wandb_report']}"]
    if wandb.get("wandb_sync"):
        lines.append(f"- Upload the {wandb['offline_runs']} offline runs first: `{wandb['wandb_sync']}`")
    return "\n".join(lines) + "\n"
