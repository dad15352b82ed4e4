"""Every metric is reported with its n and a bootstrap 95% interval, so small offline runs
show how little they can tell apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float | None  # 2.5th percentile of the bootstrap means; None: no interval can be had
    high: float | None  # 97.5th percentile
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} {interval_text(self.as_dict())} (n={self.n})"


def interval_text(est: dict) -> str:
    """`[low, high]`, or why there is none (all items measured as one, e.g. one batch's time)."""
    if est.get("low") is None:
        return "(no interval: one measurement)"
    return f"[{est['low']:.3f}, {est['high']:.3f}]"


def bootstrap(values, resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of `values` with a percentile bootstrap 95% interval (deterministic for a seed)."""
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        raise ValueError("no values to estimate from")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size))


def bootstrap_ratio(numerators, denominators, resamples: int = 2000, seed: int = 0, clusters=None) -> Estimate:
    """sum(numerators) / sum(denominators) with items resampled together: a micro average,
    such as IFEval's instruction-level accuracy over prompts with several instructions.
    `clusters` (one label per item) resamples whole clusters instead: items measured together,
    such as the prompts of one batch that share its time. One cluster gives no interval."""
    num = np.asarray([float(v) for v in numerators], dtype=float)
    den = np.asarray([float(v) for v in denominators], dtype=float)
    if num.size == 0 or den.sum() == 0:
        raise ValueError("no values to estimate from")
    n = int(num.size)
    if clusters is not None:
        labels: dict = {}
        index = np.asarray([labels.setdefault(c, len(labels)) for c in clusters])
        num, den = np.bincount(index, weights=num), np.bincount(index, weights=den)
        if len(labels) == 1:
            return Estimate(float(num.sum() / den.sum()), None, None, n)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(resamples, num.size))
    ratios = num[picks].sum(axis=1) / np.maximum(den[picks].sum(axis=1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return Estimate(float(num.sum() / den.sum()), float(low), float(high), n)


def print_estimates(title: str, metrics: dict[str, dict], first_column: str = "metric") -> None:
    """A terminal table of `Estimate.as_dict()`s: mean, 95% interval and n per metric."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in (first_column, "mean", "95% interval", "n"):
        table.add_column(column, justify="left" if column == first_column else "right")
    for key, est in metrics.items():
        table.add_row(key, f"{est['mean']:.3f}", interval_text(est), str(est["n"]))
    Console().print(table)
