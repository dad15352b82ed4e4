"""Analyze stage: why WSD works, measured with likelihoods on the configured pilot and base
(`wsd.analysis`): difficulty by answer position under both models, the base's perplexity on
the rest of an answer given its first m tokens (and its own continuation from there), and
where a WSD run switches and at which stage of the answer. Resumable: per-answer scores,
continuations and judge replies are appended as they come and reused by a rerun.

    python -m pipelines.analyze experiment=mini
    python -m pipelines.analyze experiment=mini backend=hf analysis.parts=[difficulty,prefix]
    python -m pipelines.analyze experiment=mini analysis.answers=outputs/generate/alpaca_eval/pilot__...
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from eval.endpoints import ClientSettings, check_endpoint, open_endpoint
from eval.judges import build_judge
from eval.scores import generation_source
from eval.stats import bootstrap
from pipelines import multirun_flag_first
from wsd.analysis import positions, switch_stages
from wsd.analysis.figures import plot_analyses
from wsd.analysis.inputs import answer_items, wsd_records
from wsd.analysis.tables import analysis_tables
from wsd.backends.engines import ModelPool
from wsd.backends.models import ModelSpec, check_available
from wsd.core.schemas import AnalysisBlock
from wsd.core.store import RecordFile, write_atomic
from wsd.runs import identity as identities
from wsd.runs.tracking import tracked, validate_logger

log = logging.getLogger("wsd.analyze")

POOL = ModelPool()


def run(cfg: DictConfig, pool: ModelPool | None = None) -> dict:
    """Check the answers, the WSD run and the models first; then compute the parts not yet on disk."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    a = AnalysisBlock(**resolved["analysis"])
    a.validate()
    validate_logger(resolved["logger"])
    items = answer_items(a.answers, resolved["benchmark"], a.limit)
    records = None
    if "switches" in a.parts:
        if cfg.method.name != "wsd":
            raise ValueError(f"analysis part 'switches' reads a WSD run; method={cfg.method.name} names none "
                             "(leave method at wsd, or drop the part: analysis.parts=[difficulty,prefix])")
        records = wsd_records(generation_source(cfg)[0])
    judge = a.stage_judge
    client = ClientSettings.from_config(judge["client"]) if "switches" in a.parts and judge["endpoint"] else None
    if client is not None:
        check_endpoint(judge["endpoint"], client)
    specs = {role: ModelSpec.from_config(resolved[role]) for role in ("base", "pilot")}
    for spec in specs.values():
        check_available(spec)
    identity = identities.analysis(cfg)
    out = identity.claim()
    pool = POOL if pool is None else pool
    summary = {"experiment": cfg.name, "benchmark": resolved["benchmark"]["name"], "answers": a.answers,
               "base": resolved["base"]["name"], "pilot": resolved["pilot"]["name"],
               "backend": resolved["backend"]["name"], "items": len(items),
               "identity": identity.record()}
    log.info("analysing %d answers of %s in %s", len(items), a.answers, out)
    with tracked(resolved["logger"], stage="analyze", group=cfg.name, config=resolved, folder=out,
                 name=f"{summary['benchmark']}/{summary['base']}/{summary['pilot']}") as tracker:
        with pool.holding():
            roles = ("base", "pilot") if "difficulty" in a.parts else ("base",) if "prefix" in a.parts else ()
            engines = pool.engines({role: specs[role] for role in roles}, resolved) if roles else {}
            scored = {role: _scored(engines[role], role, items, a.max_answer_tokens, out) for role in engines}
            if "difficulty" in a.parts:
                resampled = (a.bootstrap_resamples, cfg.seed)
                summary["difficulty"] = {role: {"buckets": positions.difficulty_by_position(s, *resampled),
                                                "premise": positions.premise_verdict(s, *resampled)}
                                         for role, s in scored.items()}
            if "prefix" in a.parts:
                summary["prefix"] = _prefix(engines["base"], items, scored["base"], a, resolved, out, cfg.seed)
        if "switches" in a.parts:
            summary["switches"] = _switches(records, judge, client, out)
        summary["tables"] = analysis_tables(summary, out)
        figure = plot_analyses(out / "analyses.png", summary)
        summary["figure"] = str(figure) if figure else None
        tracker.summary(_headline(summary))
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _scored(engine, role: str, items: list[dict], max_answer_tokens: int, out: Path) -> list[positions.ScoredAnswer]:
    """Every answer's token scores under `role`, those already in `scores_<role>.jsonl` reused."""
    file = RecordFile(out / f"scores_{role}.jsonl")
    done = {r["id"]: r for r in file.read()}
    todo = [item for item in items if item["id"] not in done]
    for start in range(0, len(todo), 8):
        for scored in positions.score_answers(engine, role, todo[start : start + 8], max_answer_tokens):
            file.append(scored.as_dict())
            done[scored.id] = scored.as_dict()
    log.info("%s: %d answers scored (%d reused)", role, len(items), len(items) - len(todo))
    return [positions.ScoredAnswer(**done[item["id"]]) for item in items]


def _prefix(base, items: list[dict], scored: list[positions.ScoredAnswer], a: AnalysisBlock, resolved: dict,
            out: Path, seed: int) -> dict:
    """The perplexity curve over every scored answer long enough, and the base's greedy
    continuation after m reference tokens against the reference's next tokens (cosine
    similarity of MiniLM embeddings, a proxy) over the first `continuation_answers` of them."""
    curve, covered = positions.prefix_curve(scored, a.prefix_tokens, a.bootstrap_resamples, seed)
    chosen = set(covered[: a.continuation_answers])
    requests = positions.continuation_requests(base, [i for i in items if i["id"] in chosen], a.prefix_tokens,
                                               a.continuation_tokens)
    file = RecordFile(out / "continuations.jsonl")
    done = {(r["id"], r["m"]): r for r in file.read()}
    todo = [r for r in requests if (r["id"], r["m"]) not in done]
    if todo:
        texts = positions.greedy_continuations(base, todo, resolved["generation"]["batch_size"], a.continuation_tokens)
        similarity = build_judge({"name": "reference_similarity"}).score(
            [{"response": text, "reference": r["reference_rest"]} for r, text in zip(todo, texts)])
        for r, text, s in zip(todo, texts, similarity):
            row = {"id": r["id"], "m": r["m"], "continuation": text, "reference_rest": r["reference_rest"],
                   "similarity": s["similarity"] if s else None}
            file.append(row)
            done[(r["id"], r["m"])] = row
    for point in curve:
        values = [done[(r["id"], r["m"])]["similarity"] for r in requests if r["m"] == point["m"]]
        values = [v for v in values if v is not None]
        point["continuation_similarity"] = bootstrap(values, a.bootstrap_resamples, seed).as_dict() if values else None
    return {"curve": curve, "answers": len(covered), "continuation_answers": len(chosen),
            "continuation_tokens": a.continuation_tokens, "similarity_proxy": True}


def _switches(records: list[dict], judge: dict, client: ClientSettings | None, out: Path) -> dict:
    """Switch positions and stages: by rule for every switched record, and by the judge."""
    rows = switch_stages.switch_rows(records)
    switched = [r for r in rows if r["switched"]]
    if client is not None and switched:
        with open_endpoint(judge["endpoint"], client, out) as chat:
            replies = chat.complete([chat.request(switch_stages.rubric_messages(r["question"], r["kept"]),
                                                  temperature=0.0, max_tokens=judge["max_tokens"]) for r in switched])
        for r, reply in zip(switched, replies):
            r["judge_reply"], r["judge_stage"] = reply, switch_stages.parse_stage(reply)
    write_atomic(out / "switches.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    ks = np.array([r["k"] for r in switched], dtype=float)
    shares = np.array([r["share"] for r in switched if r["share"] is not None], dtype=float)
    summary = {"records": len(rows), "switched": len(switched),
               "k": _quantiles(ks), "share": _quantiles(shares),
               "rule": switch_stages.stage_shares([r["rule_stage"] for r in switched]),
               "examples": [{k: r[k] for k in ("id", "k", "last_line", "rule_stage", "judge_stage") if k in r}
                            for r in switched[:8]]}
    if client is not None:
        summary["judge"] = {**switch_stages.stage_shares([r.get("judge_stage") for r in switched]),
                            "proxy": bool(judge["proxy"]),
                            "agrees_with_rule": (sum(r.get("judge_stage") == r["rule_stage"] for r in switched)
                                                 / len(switched)) if switched else None}
    return summary


def _headline(summary: dict) -> dict:
    """The numbers a run table shows: each model's premise gap, the prefix curve's perplexities,
    the switch stages' shares."""
    out = {}
    for role, part in (summary.get("difficulty") or {}).items():
        if part["premise"]["gap"]:
            out[f"{role}/later_minus_beginning"] = part["premise"]["gap"]["mean"]
    for point in (summary.get("prefix") or {}).get("curve", []):
        out[f"prefix/perplexity/m={point['m']}"] = point["perplexity"]["mean"]
    switches = summary.get("switches") or {}
    for reading in ("rule", "judge"):
        for stage, share in ((switches.get(reading) or {}).get("shares") or {}).items():
            out[f"switches/{reading}/{stage}"] = share
    return out


def _quantiles(values: np.ndarray) -> dict | None:
    if values.size == 0:
        return None
    q = np.percentile(values, [10, 25, 50, 75, 90])
    percentiles = {f"p{p}": float(v) for p, v in zip((10, 25, 50, 75, 90), q)}
    return {"n": int(values.size), "mean": float(values.mean()), **percentiles,
            "values": values.tolist()}


@hydra.main(config_path="../conf", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    print(f"analyses of {summary['base']} / {summary['pilot']} on {summary['benchmark']}: "
          f"{Path(summary['identity']['folder']) / 'analyses.md'}")


if __name__ == "__main__":
    multirun_flag_first()
    main()
