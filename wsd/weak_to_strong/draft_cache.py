"""Pilot drafts and their base-model probabilities, on disk, shared by runs and sweeps.

Neither depends on the switch window or threshold, so every point of a (window, threshold)
sweep can reuse them. An entry is keyed by (pilot, base, draft settings) and the prompt.

How early stopping and sweeps combine: an early-stopped entry holds the draft only up to its
switch, with probabilities for the stable tokens scored so far. It serves any (window,
threshold) whose switch lies within those probabilities (the decision cannot change with more
text). A point that would switch later, or never, needs the full draft, so that entry is
recomputed (and then stored complete). Sweeps therefore draft with `wsd.early_stop=false`:
the first point stores complete drafts, and every later point reuses them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from wsd.backends.decoding import Draft
from wsd.core.store import config_key, write_atomic


@dataclass
class CachedDraft:
    draft: Draft
    prompt_ids: list[int]  # base prompt ids (the prompt part of the joined tokenization)
    draft_ids: list[int]  # draft ids, base tokenization (stable ones only if not complete)
    probs: list[float]  # base probability of each of draft_ids
    complete: bool  # the draft ran to its end; False: it stopped early at a switch

    def usable(self, settings) -> bool:
        """Does this entry decide the switch for these settings' (window, threshold) exactly?"""
        return self.complete or settings.switch_at(self.probs) is not None


class DraftCache:
    def __init__(self, root: str | Path, identity: dict):
        self.dir = Path(root) / config_key(identity)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "identity.json", json.dumps(identity, indent=1, sort_keys=True))

    def _path(self, messages) -> Path:
        return self.dir / f"{config_key(messages)}.json"

    def get(self, messages) -> CachedDraft | None:
        path = self._path(messages)
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return CachedDraft(**{**data, "draft": Draft(**data["draft"])})

    def put(self, messages, entry: CachedDraft) -> None:
        old = self.get(messages)
        if old is not None and old.complete and not entry.complete:
            return  # never replace a complete draft by a shorter one
        write_atomic(self._path(messages), json.dumps(asdict(entry)))
