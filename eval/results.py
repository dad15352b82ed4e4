"""One table of every finished evaluation of an experiment: methods (rows) x benchmark
metrics (columns), each cell a mean with its bootstrap 95% interval and n, offline proxies
marked. The evaluate and alignment-tax stages refresh it after every run, so a multirun
ends with its comparison table written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from wsd.store import write_atomic

PROXY_MARK = "†"


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
                         "mtime": path.stat().st_mtime})
    return rows


def run_label(run: dict) -> str:
    """`wsd (w=6, γ=0.8)`-style names for table rows; the models when they are not the
    experiment's only pair are in the `models` column of the CSV."""
    label = run["method"]
    if run.get("wsd"):
        label += f" (w={run['wsd']['window']}, γ={run['wsd']['threshold']})"
    return label


def _cell(row: dict) -> str:
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}] n={row['n']}"


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
    body = [[m, *(_cell(newest[(m, c)]) if (m, c) in newest else "" for c in columns)] for m in methods]
    return header, body


def write_tables(output_root: str | Path, experiment: str) -> Path | None:
    """`outputs/tables/<experiment>/evaluation.{md,csv}`; returns the Markdown path."""
    rows = evaluation_rows(output_root, experiment)
    if not rows:
        return None
    header, body = comparison_table(rows)
    folder = Path(output_root) / "tables" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *("| " + " | ".join(r) + " |" for r in body), "",
             f"Mean [bootstrap 95% interval] n. {PROXY_MARK} offline proxy metric (not the paper's judge)."]
    write_atomic(folder / "evaluation.md", "\n".join(lines) + "\n")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["method", "benchmark", "metric", "mean", "low", "high", "n", "proxy",
                                             "summary"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(folder / "evaluation.csv", out.getvalue())
    return folder / "evaluation.md"
