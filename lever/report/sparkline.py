"""Training curves: unicode sparklines for the terminal, PNG plots when matplotlib is installed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lever.records import StageEntry

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


def plot_curves(
    series: dict[str, list[dict]], out_dir: Path, selected: dict[str, StageEntry | None] | None = None
) -> list[Path] | None:
    """One PNG per metric, a line per run (label -> metrics rows); None when matplotlib is absent.

    The x axis counts epochs across stages in file order; dotted lines mark stage changes
    and a dot marks each run's selected epoch.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # why: no display needed, works headless
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for rows in series.values():
        keys += [k for k in metric_keys(rows) if k not in keys]
    written = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, rows in series.items():
            xs = [i + 1 for i, r in enumerate(rows) if _finite(r.get(key))]
            ys = [float(r[key]) for r in rows if _finite(r.get(key))]
            if not xs:
                continue
            ax.plot(xs, ys, marker=".", label=label)
            sel = (selected or {}).get(label)
            for i, r in enumerate(rows):
                if sel is not None and (r.get("stage"), r.get("epoch")) == (sel.stage, sel.epoch) and _finite(r.get(key)):
                    ax.plot([i + 1], [float(r[key])], "o", color="black")
            for i in range(1, len(rows)):
                if rows[i].get("stage") != rows[i - 1].get("stage"):
                    ax.axvline(i + 0.5, linestyle=":", color="grey")
        ax.set_title(key)
        ax.set_xlabel("epoch (all stages)")
        if len(series) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / (key.replace("/", "_") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
