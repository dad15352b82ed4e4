"""The analyses as Markdown tables (`analyses.md` beside the summary; the report links them)."""

from __future__ import annotations

import json
from pathlib import Path

from wsd.analysis.switch_stages import ANSWER_STAGES
from wsd.core.store import write_atomic


def interval(est: dict | None, digits: int = 3) -> str:
    if not est:
        return ""
    return f"{est['mean']:.{digits}f} [{est['low']:.{digits}f}, {est['high']:.{digits}f}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def analysis_tables(summary: dict, folder: Path) -> str:
    """Write `analyses.md` (every part the summary holds) and return its path."""
    lines = [f"# Analyses: base {summary['base']}, pilot {summary['pilot']}, {summary['benchmark']} "
             f"({summary['answers']} answers, n = {summary['items']}, backend {summary['backend']})", "",
             "Log-probabilities and ranks are real measurements (no judge); intervals are bootstrap 95% over "
             "answers. Reference similarity and the judge's stage reading are proxies.", ""]
    for role, part in (summary.get("difficulty") or {}).items():
        lines += [f"## Difficulty by position under the {role} ({summary[role]})", ""]
        lines += _table(["positions", "log-prob", "top-1 share", "reciprocal rank", "median rank", "answers", "tokens"],
                        [[b["bucket"], interval(b["logprob"]), interval(b["top1"]), interval(b["reciprocal_rank"]),
                          f"{b['median_rank']:g}", b["logprob"]["n"], b["logprob"]["tokens"]]
                         for b in part["buckets"] if b["logprob"]])
        premise = part["premise"]
        if premise["gap"]:
            lines += [f"Later (tokens {premise['later']}) minus beginning (tokens {premise['beginning']}) mean "
                      f"log-prob per answer: {interval(premise['gap'])} (n = {premise['gap']['n']}): "
                      f"**{premise['verdict']}**.", ""]
        else:
            lines += [f"Premise: {premise['verdict']}.", ""]
    prefix = summary.get("prefix")
    if prefix:
        lines += ["## What an aligned beginning buys (base)", "",
                  f"Perplexity of the rest of each answer given its first m tokens ({prefix['answers']} answers); "
                  f"the base's greedy continuation ({prefix['continuation_tokens']} tokens) after those m tokens "
                  f"against the reference's next tokens ({prefix['continuation_answers']} answers, proxy).", ""]
        lines += _table(["m", "perplexity of the rest", "continuation similarity (proxy)"],
                        [[p["m"], interval(p["perplexity"], 2), interval(p.get("continuation_similarity"))]
                         for p in prefix["curve"]])
    switches = summary.get("switches")
    if switches:
        k = switches["k"]
        lines += ["## Where WSD switches", "",
                  f"{switches['switched']} of {switches['records']} answers switched"
                  + (f"; kept draft tokens k: median {k['p50']:g} (p10 {k['p10']:g}, p90 {k['p90']:g}); share of "
                     f"the answer: median {switches['share']['p50']:.2f}" if k else "") + ".", ""]
        judge = switches.get("judge")
        header = ["stage", "by rule"] + ([f"by judge{' (proxy)' if judge['proxy'] else ''}"] if judge else [])
        rows = [[name, _share(switches["rule"], name)] + ([_share(judge, name)] if judge else [])
                for name in ANSWER_STAGES]
        lines += _table(header, rows)
        if judge:
            lines += [f"The judge named a stage for {judge['classified']} of {judge['of']}; it agrees with the rule "
                      f"on {judge['agrees_with_rule']:.2f} of the switches.", ""]
        lines += ["Examples (the kept text's last line at the switch):", ""]
        lines += _table(["id", "k", "last line", "rule", "judge"],
                        [[e["id"], e["k"], e["last_line"].replace("|", "\\|")[:80], e["rule_stage"],
                          e.get("judge_stage") or ""] for e in switches["examples"]])
    path = folder / "analyses.md"
    write_atomic(path, "\n".join(lines))
    return str(path)


def _share(part: dict, name: str) -> str:
    share = part["shares"][name]
    return "" if share is None else f"{share:.2f}"


def experiment_analyses(output_root: Path, experiment: str) -> list[dict]:
    """The finished analyses of one experiment (their summaries), newest last."""
    found = []
    for path in sorted(Path(output_root).glob("analyze/*/*/summary.json"), key=lambda p: p.stat().st_mtime):
        summary = json.loads(path.read_text())
        if summary.get("experiment") == experiment:
            found.append(summary)
    return found


def premise_lines(summary: dict) -> list[str]:
    """One line per scored model: the premise's verdict with its numbers."""
    lines = []
    for role, part in (summary.get("difficulty") or {}).items():
        p = part["premise"]
        numbers = f"later minus beginning log-prob {interval(p['gap'])}, n = {p['gap']['n']}" if p["gap"] else ""
        line = f"{summary['benchmark']}, {role} {summary[role]}: {p['verdict']}"
        lines.append(f"{line} ({numbers})" if numbers else line)
    return lines
