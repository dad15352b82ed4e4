"""The analyses as one figure of small multiples: a panel per measure, intervals drawn, the
legend below the panels, never over the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.reporting import pyplot
from wsd.analysis.switch_stages import ANSWER_STAGES


def _with_interval(ax, xs, estimates: list[dict | None], label: str, marker: str) -> None:
    points = [(x, e) for x, e in zip(xs, estimates) if e]
    if not points:
        return
    x = np.array([p[0] for p in points])
    mean = np.array([e["mean"] for _, e in points])
    err = np.array([[e["mean"] - e["low"] for _, e in points], [e["high"] - e["mean"] for _, e in points]])
    ax.errorbar(x, mean, yerr=err, marker=marker, capsize=3, label=label)


def plot_analyses(path: Path, summary: dict) -> Path | None:
    """Difficulty by position (log-prob, top-1 share), the prefix curve and its continuation
    similarity, and the switches (positions; stages by rule and judge), as far as present."""
    panels = []
    if summary.get("difficulty"):
        panels += [("logprob", "mean log-prob by answer position"), ("top1", "top-1 share by answer position")]
    if summary.get("prefix"):
        panels += [("perplexity", "base perplexity of the rest after m tokens"),
                   ("similarity", "base continuation vs reference (proxy)")]
    if summary.get("switches") and summary["switches"]["switched"]:
        panels += [("k", "switch position k (kept draft tokens)"), ("stages", "stage of the answer at the switch")]
    if not panels:
        return None
    plt = pyplot()
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (kind, title) in zip(axes.flat, panels):
        ax.set_title(title, fontsize="medium")
        if kind in ("logprob", "top1"):
            for (role, part), marker in zip(summary["difficulty"].items(), "os"):
                buckets = part["buckets"]
                _with_interval(ax, range(len(buckets)), [b[kind] for b in buckets], f"{role} ({summary[role]})", marker)
                ax.set_xticks(range(len(buckets)), [b["bucket"] for b in buckets], rotation=45, fontsize="small")
            ax.set_xlabel("answer tokens")
        elif kind in ("perplexity", "similarity"):
            curve = summary["prefix"]["curve"]
            key = "perplexity" if kind == "perplexity" else "continuation_similarity"
            _with_interval(ax, range(len(curve)), [p.get(key) for p in curve], f"base ({summary['base']})", "o")
            ax.set_xticks(range(len(curve)), [str(p["m"]) for p in curve])
            ax.set_xlabel("m: reference tokens given")
        elif kind == "k":
            ks = summary["switches"]["k"]["values"]
            ax.hist(ks, bins=min(30, max(5, len(set(ks)))), color="tab:gray")
            ax.set(xlabel="k", ylabel="answers")
        else:
            names = list(ANSWER_STAGES)
            readings = [("rule", summary["switches"]["rule"])]
            if summary["switches"].get("judge"):
                readings.append(("judge (proxy)" if summary["switches"]["judge"]["proxy"] else "judge",
                                 summary["switches"]["judge"]))
            width = 0.8 / len(readings)
            for i, (label, part) in enumerate(readings):
                ax.bar(np.arange(len(names)) + i * width, [part["shares"][n] or 0 for n in names], width, label=label)
            ax.set_xticks(np.arange(len(names)) + width * (len(readings) - 1) / 2, names, fontsize="small")
            ax.set_ylabel("share of switches")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(f"{summary['base']} (base) and {summary['pilot']} (pilot) on {summary['benchmark']}, "
                 f"n = {summary['items']}", fontsize="medium")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize="small")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
