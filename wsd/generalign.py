"""GenerAlign-style preference data: prompts tagged harmless / helpful / honest, kept apart
from every evaluation prompt, answered several times by teacher methods, scored by judges,
and turned into DPO pairs (best vs worst) and SFT targets (best).

The paper's GenerAlign is not released; this builds the same kind of data from whatever
prompt sources a config names (the Hub when online, local files, or the prompt sets shipped
in registry packages offline).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass

from wsd.prompt_sets import hub_rows, read_rows
from wsd.packaged import packaged_file

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
