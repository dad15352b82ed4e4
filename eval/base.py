"""What every judge is: `score(items)` and hooks that do nothing unless a judge needs them,
so the evaluate stage calls each one of every judge."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Judge:
    """`name` and `proxy` (an offline stand-in for the paper's judge); `requires`: what an
    item needs to be scored at all ("reference", "instructions", "baseline": see
    `eval.judges.REQUIREMENTS`); `ratios`: metric -> (numerator key, denominator key), reported
    as a ratio of sums over items (the keys are per-item counts, not metrics). Values of a score
    row other than numbers (raw judgments, verdict labels) are kept with the score and not
    averaged."""

    name: str = ""
    proxy: bool = True
    requires: str | None = None
    ratios: dict[str, tuple[str, str]] | None = None

    def score(self, items: list[dict]) -> list[dict | None]:
        raise NotImplementedError

    @classmethod
    def check_config(cls, judge: dict, benchmark: dict | None) -> object:
        """Checks of milliseconds on the judge's config, for a plan's every step before anything
        runs (an endpoint's URL and key, a baselines file)."""

    def check_items(self, items: list[dict]) -> None:
        """What it needs of the items, checked before any judging."""

    @contextlib.contextmanager
    def session(self) -> Iterator[Judge]:
        """The context its scoring runs in (a judge on a chat endpoint opens it there)."""
        yield self

    def set_metrics(self, scores: list[dict | None], items: list[dict]) -> dict:
        """Metrics of the whole set (alpaca_eval's win rate)."""
        return {}

    def estimates(self, scores: list[dict | None], items: list[dict]) -> dict[str, dict]:
        """Whole-set metrics with their own intervals, beside the per-item ones (Arena-Hard's
        Bradley-Terry win rates)."""
        return {}
