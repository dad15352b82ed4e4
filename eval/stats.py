"""Every metric is reported with its n and a bootstrap 95% interval, so small offline runs
show how little they can tell apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # 2.5th percentile of the bootstrap means
    high: float  # 97.5th percentile
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def bootstrap(values, resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of `values` with a percentile bootstrap 95% interval (deterministic for a seed)."""
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        raise ValueError("no values to estimate from")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size))


def bootstrap_ratio(numerators, denominators, resamples: int = 2000, seed: int = 0) -> Estimate:
    """sum(numerators) / sum(denominators) with items resampled together: a micro average,
    such as IFEval's instruction-level accuracy over prompts with several instructions."""
    num = np.asarray([float(v) for v in numerators], dtype=float)
    den = np.asarray([float(v) for v in denominators], dtype=float)
    if num.size == 0 or den.sum() == 0:
        raise ValueError("no values to estimate from")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(resamples, num.size))
    ratios = num[picks].sum(axis=1) / np.maximum(den[picks].sum(axis=1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return Estimate(float(num.sum() / den.sum()), float(low), float(high), int(num.size))


def print_estimates(title: str, metrics: dict[str, dict], first_column: str = "metric") -> None:
    """A terminal table of `Estimate.as_dict()`s: mean, 95% interval and n per metric."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in (first_column, "mean", "95% interval", "n"):
        table.add_column(column, justify="left" if column == first_column else "right")
    for key, est in metrics.items():
        table.add_row(key, f"{est['mean']:.3f}", f"[{est['low']:.3f}, {est['high']:.3f}]", str(est["n"]))
    Console().print(table)
