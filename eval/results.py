"""One table of every finished evaluation of an experiment: methods (rows) x benchmark
metrics (columns), each cell a mean with its bootstrap 95% interval and n, offline proxies
marked. The evaluate and alignment-tax stages refresh it after every run, so a multirun
ends with its comparison table written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from eval.stats import interval_text
from wsd.core.store import write_atomic

PROXY_MARK = "†"
PROXY_NOTE = f"{PROXY_MARK} offline proxy metric (not the paper's judge)."


def evaluation_rows(output_root: str | Path, experiment: str) -> list[dict]:
    """One row per (run, metric) from the evaluate and evaluate_tax summaries of `experiment`."""
    root = Path(output_root)
    rows = []
    for path in sorted([*root.glob("evaluate/*/*/*/summary.json"), *root.glob("evaluate_tax/*/summary.json")]):
        summary = json.loads(path.read_text())
        run = summary.get("run", {})
        if run.get("experiment") != experiment:
            continue
        tax = "judge" not in summary
        benchmark = "alignment tax" if tax else summary["benchmark"]
        for metric, est in summary["metrics"].items():
            rows.append({"method": run_label(run), "benchmark": benchmark,
                         "metric": metric if tax else f"{summary['judge']}/{metric}",
                         "proxy": bool(summary.get("proxy", False)), **est, "summary": str(path),
                         "mtime": path.stat().st_mtime, "run": run,
                         "generation": summary.get("generation") or summary.get("run_dir")})
    with_models = ambiguous_labels([r["run"] for r in rows])
    for row in rows:
        if row["method"] in with_models:
            row["method"] = run_label(row["run"], with_models=True)
    return rows


def run_label(run: dict, with_models: bool = False) -> str:
    """`wsd (w=6, γ=0.8)`-style names for table rows, with the models (`wsd (w=6, γ=0.8) ·
    SmolLM2-135M-Instruct → gemma-3-270m`) where one name would cover several model sets."""
    label = run["method"]
    if (run.get("wsd") or {}).get("force_keep") is not None:
        label += f" (switch forced at k={run['wsd']['force_keep']})"
    elif run.get("wsd"):
        label += f" (w={run['wsd']['window']}, γ={run['wsd']['threshold']})"
    if run.get("settings"):
        label += " (" + ", ".join(f"{k}={v}" for k, v in run["settings"].items()) + ")"
    if run.get("reward_proxy"):
        label += f" [proxy reward model{PROXY_MARK}]"
    if with_models:
        label += " · " + " → ".join(run["models"].values())
    return label


def ambiguous_labels(runs: list[dict]) -> set[str]:
    """The short labels that name runs with different models (a packaged and a trained pilot)."""
    models: dict[str, set] = {}
    for run in runs:
        models.setdefault(run_label(run), set()).add(tuple(run["models"].items()))
    return {label for label, sets in models.items() if len(sets) > 1}


def estimate_cell(est: dict) -> str:
    """One estimate as a table cell: mean [bootstrap 95% interval] n."""
    return f"{est['mean']:.3f} {interval_text(est)} n={est['n']}"


def markdown_table(header: list[str], body: list[list[str]], note: str = "") -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *("| " + " | ".join(r) + " |" for r in body)]
    return "\n".join(lines + (["", note] if note else [])) + "\n"


def comparison_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the methods x metrics table; where a method was scored twice on
    one metric (a larger limit later), the newest summary wins."""
    newest: dict[tuple[str, str], dict] = {}
    for row in sorted(rows, key=lambda r: r["mtime"]):
        newest[(row["method"], f"{row['benchmark']}: {row['metric']}")] = row
    methods = list(dict.fromkeys(m for m, _ in newest))
    columns = sorted(dict.fromkeys(c for _, c in newest))
    proxies = {c for (_, c), r in newest.items() if r["proxy"]}
    header = ["method", *(f"{c}{PROXY_MARK if c in proxies else ''}" for c in columns)]
    body = [[m, *(estimate_cell(newest[(m, c)]) if (m, c) in newest else "" for c in columns)] for m in methods]
    return header, body


def write_tables(output_root: str | Path, experiment: str) -> Path | None:
    """`outputs/tables/<experiment>/evaluation.{md,csv}`; returns the Markdown path."""
    rows = evaluation_rows(output_root, experiment)
    if not rows:
        return None
    header, body = comparison_table(rows)
    folder = Path(output_root) / "tables" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "evaluation.md",
                 markdown_table(header, body, f"Mean [bootstrap 95% interval] n. {PROXY_NOTE}"))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["method", "benchmark", "metric", "mean", "low", "high", "n", "proxy",
                                             "summary"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(folder / "evaluation.csv", out.getvalue())
    return folder / "evaluation.md"
