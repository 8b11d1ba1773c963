"""Training curves as unicode sparklines for the terminal (the figures are lever.report.figures)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BARS = "▁▂▃▄▅▆▇█"
SKIP_KEYS = {"stage", "epoch"}


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def sparkline(values: list[float | None], width: int | None = None) -> str:
    """One character per value: bar = BARS[round(7 * (v - min) / (max - min))].

    Missing or non-finite values are blanks; a constant series is all mid bars.
    With ``width`` and more values than that, consecutive values are averaged into
    ``width`` buckets first.
    """
    vals = np.array([float(v) if _finite(v) else np.nan for v in values], dtype=np.float64)
    if width is not None and vals.size > width > 0:
        buckets = np.array_split(vals, width)
        vals = np.array([np.nanmean(b) if np.isfinite(b).any() else np.nan for b in buckets])
    ok = np.isfinite(vals)
    if not ok.any():
        return " " * vals.size
    lo, hi = vals[ok].min(), vals[ok].max()
    out = []
    for v in vals:
        if not np.isfinite(v):
            out.append(" ")
        elif hi == lo:
            out.append(BARS[(len(BARS) - 1) // 2])
        else:
            out.append(BARS[int(round((len(BARS) - 1) * (v - lo) / (hi - lo)))])
    return "".join(out)


def metric_keys(metrics: list[dict]) -> list[str]:
    """Numeric metric names in order of first appearance (``stage`` and ``epoch`` excluded)."""
    keys: list[str] = []
    for row in metrics:
        for k, v in row.items():
            if k not in SKIP_KEYS and k not in keys and _finite(v):
                keys.append(k)
    return keys


def stage_series(metrics: list[dict], key: str) -> list[tuple[str, list[float | None]]]:
    """A metric's values per stage, stages in order of first appearance, rows in file order."""
    stages: dict[str, list[float | None]] = {}
    for row in metrics:
        stage = str(row.get("stage", "?"))
        v = row.get(key)
        stages.setdefault(stage, []).append(float(v) if _finite(v) else None)
    return [(s, vs) for s, vs in stages.items() if any(v is not None for v in vs)]


@dataclass
class SparkRow:
    metric: str
    stage: str
    spark: str
    first: float | None
    last: float | None
    lo: float | None
    hi: float | None


def spark_rows(metrics: list[dict], width: int = 40) -> list[SparkRow]:
    """A sparkline with first/last/min/max for every (metric, stage) of a metrics.jsonl."""
    rows = []
    for key in metric_keys(metrics):
        for stage, vals in stage_series(metrics, key):
            got = [v for v in vals if v is not None]
            rows.append(SparkRow(key, stage, sparkline(vals, width), got[0], got[-1], min(got), max(got)))
    return rows
