"""Figures a paper can use: first the data of each figure, pure functions over what the tables compute; then the drawing.

    shot_curves(lb)          accuracy against shots per plan, with the 95% interval   <- the leaderboard (`lever leaderboard`)
    deltas(cmp)              plan - baseline per shot count, with the paired interval <- the comparison (`lever compare`)
    training_curves(plans)   per-epoch metrics of several plans on shared axes         <- each run's metrics.jsonl

Every number a figure draws is one the table prints (the same Leaderboard or Comparison object), so
`lever plot shots --json` equals the cells of `lever leaderboard --json`. `draw(data, path)` renders any of them with
matplotlib's Agg backend (no display) into PNG, PDF or SVG, chosen by the file's extension; matplotlib is the `plot`
extra, imported only here and only when drawing.

Style: the Okabe-Ito palette (distinguishable under the common colour-vision deficiencies), 8-point text, a
single-column width (3.5 in) for the shot and delta figures and a two-column width (7 in) for the training curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lever.errors import LeverError
from lever.io import atomic_write, os_reason

from .leaderboard import MEAN, Leaderboard, build_leaderboard
from .results import PlanRuns
from .significance import ALPHA
from .sparkline import metric_keys
from .tables import AVG, Comparison

FORMATS = (".png", ".pdf", ".svg")
# Okabe & Ito (2008), "Color Universal Design": black first is kept for the baseline.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
BASELINE_COLOUR = "#000000"
ZERO_SHOT_COLOUR = "#777777"
COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0  # inches: both columns
DPI = 150  # PNG resolution: sharp at those widths, tens of kilobytes a file

# The training-curve panels, in order: (metrics.jsonl key, axis label). A panel is drawn when some plan logged its key;
# a new metric is one line here.
CURVE_METRICS: list[tuple[str, str]] = [
    ("val/loss", "validation loss"),
    ("val/reward", "validation reward (greedy)"),
    ("val/accuracy", "validation accuracy (greedy)"),
    ("losses/rce", "RCE loss"),
    ("losses/ppo", "GRPO loss"),
    ("rollout/reward_mean", "sampled reward mean"),
    ("rollout/reward_std", "sampled reward std"),
    ("rollout/zero_std_frac", "sampled groups with equal rewards (share)"),
    ("kl/value", "KL to the reference"),
    ("adv/std", "advantage std"),
    ("adv/zero_frac", "groups with zero advantages (share)"),
    ("adv/flat_frac", "flat groups (share)"),
    ("policy/entropy", "entropy (loss term)"),
    ("rollout/entropy", "sampling entropy per pick"),
]


# ---------------------------------------------------------------- the data


@dataclass
class Point:
    shots: int
    value: float  # percent (accuracy) or points (delta)
    lo: float | None  # the 95% interval the table prints; None where it prints none
    hi: float | None
    mark: str = ""  # shots: the leaderboard's "best" | "tied"; deltas: "significant" (Holm-adjusted p < ALPHA)
    p: float | None = None  # deltas: the table's p against the baseline, and Holm-adjusted over its family
    p_holm: float | None = None


@dataclass
class Series:
    name: str  # the plan
    role: str  # "plan" | "baseline" | "zero-shot" (evaluated at 0 shots only: drawn as a level across the shots)
    points: list[Point]


@dataclass
class ShotFigure:
    """Lines of points against the shot count: accuracies (kind "shots") or deltas from a baseline (kind "delta")."""

    kind: str
    split: str
    ylabel: str
    series: list[Series]
    note: str  # what the numbers and intervals are: the table's own footnote
    baseline: str | None = None


@dataclass
class Curve:
    plan: str
    seed: int | None
    metric: str
    x: list[int]  # epochs counted across stages in file order (1 = the first stage's first epoch)
    y: list[float]
    selected: int | None  # x of the selected checkpoint's epoch; None when it is not in this metric's rows


@dataclass
class CurvesFigure:
    kind: str
    panels: list[tuple[str, str]]  # (metric, label), those some plan logged, in CURVE_METRICS order
    curves: list[Curve]
    stage_starts: list[float] = field(default_factory=list)  # x between two stages, over every run drawn


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def shot_curves(lb: Leaderboard, baseline: str | None = "baseline") -> ShotFigure:
    """Accuracy against shots for every plan of a leaderboard: each point a shot column's cell (accuracy, interval,
    mark) as `lever leaderboard` prints it; the mean column is left out. A plan evaluated at 0 shots only is the
    zero-shot level; the plan named `baseline` is marked as the baseline."""
    cols = [c for c in lb.columns if c.label != MEAN]
    series = []
    for row in lb.plans:
        points = [Point(int(c.label), e.accuracy, e.lo, e.hi, e.mark) for c in cols if (e := c.entries.get(row.name)) is not None]
        if not points:
            continue
        role = "baseline" if row.name == baseline else "zero-shot" if [p.shots for p in points] == [0] else "plan"
        series.append(Series(row.name, role, points))
    note = lb.footnote  # why: the bands are the table's intervals, so its footnote says what they are
    return ShotFigure(
        "shots", lb.split, "accuracy (%)", series, note, baseline if any(s.role == "baseline" for s in series) else None
    )


def deltas(cmp: Comparison) -> ShotFigure:
    """Each plan minus the baseline per shot count, with the paired 95% interval `lever compare` prints; a point is
    "significant" where the table counts it so ("N sig. (adj)": Holm-adjusted p below ALPHA over the comparison's
    family). The average row is left out."""
    series = []
    for col in cmp.plans:
        if col.baseline or col.missing:
            continue
        points = []
        for row in cmp.rows:
            c = row.cells[col.name]
            if row.label == AVG or c.delta is None:
                continue
            paired = c.lo is not None and c.hi is not None and not math.isnan(c.lo)
            mark = "significant" if c.p_holm is not None and c.p_holm < ALPHA else ""
            points.append(Point(int(row.label), c.delta, c.lo if paired else None, c.hi if paired else None, mark, c.p, c.p_holm))
        if points:
            series.append(Series(col.name, "plan", points))
    note = cmp.footnote
    return ShotFigure("delta", cmp.split, f"Δ accuracy vs {cmp.baseline} (points)", series, note, cmp.baseline)


def training_curves(plans: list[PlanRuns], metrics: list[str] | None = None) -> CurvesFigure:
    """The per-epoch metrics of every seed run of `plans`: one panel per metric of `metrics` (default: CURVE_METRICS)
    that some run logged. x counts epochs across stages in file order, so plans sharing a first stage share its x."""
    labels = dict(CURVE_METRICS)
    wanted = metrics if metrics is not None else [k for k, _ in CURVE_METRICS]
    curves, starts = [], set()
    for pr in plans:
        for run in pr.runs:
            rows = run.metrics or []
            sel = run.selected
            for i in range(1, len(rows)):
                if rows[i].get("stage") != rows[i - 1].get("stage"):
                    starts.add(i + 0.5)
            for key in wanted:
                xs = [i + 1 for i, r in enumerate(rows) if _finite(r.get(key))]
                if not xs:
                    continue
                picked = None
                if sel is not None:
                    picked = next(
                        (i + 1 for i, r in enumerate(rows) if (r.get("stage"), r.get("epoch")) == (sel.stage, sel.epoch)),
                        None,
                    )
                curves.append(
                    Curve(pr.name, run.seed, key, xs, [float(rows[x - 1][key]) for x in xs], picked if picked in xs else None)
                )
    logged = {c.metric for c in curves}
    panels = [(k, labels.get(k, k)) for k in wanted if k in logged]
    return CurvesFigure("curves", panels, curves, sorted(starts))


def plan_shot_curves(plan: PlanRuns, base: PlanRuns, split: str, n_resamples: int = 10000) -> ShotFigure:
    """The shot curve of one plan and its baseline: what `lever plot shots PLAN BASELINE` draws (the leaderboard of
    the two, at the leaderboard's default resamples)."""
    return shot_curves(build_leaderboard([base, plan], split, n_resamples=n_resamples), base.name)


def logged_metrics(plans: list[PlanRuns]) -> list[str]:
    """Every numeric metric the plans' runs logged: CURVE_METRICS' first, in its order, then the others as they
    first appear (what `lever report` draws)."""
    found = list(dict.fromkeys(k for pr in plans for run in pr.runs for k in metric_keys(run.metrics or [])))
    known = [k for k, _ in CURVE_METRICS]
    return [k for k in known if k in found] + [k for k in found if k not in known]


def figure_json(data: ShotFigure | CurvesFigure) -> dict:
    """The figure's data as plain JSON (what `lever plot ... --json` prints)."""
    from dataclasses import asdict

    return asdict(data)


# ---------------------------------------------------------------- drawing


def check_path(path: Path) -> Path:
    """The output file, its format from the extension: PNG, PDF or SVG (anything else is an error naming the file)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise LeverError(
            f"{path}: a figure is written as PNG, PDF or SVG, chosen by the file's extension",
            hint=f"name the file with one of {', '.join(FORMATS)} (e.g. {path.with_suffix('.png').name})",
        )
    return path


def has_matplotlib() -> bool:
    """Whether the plot extra is installed (a figure can be drawn)."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module set to None in sys.modules (tests hide it so)
        return False


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), or an error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise LeverError(
            "drawing a figure needs matplotlib, which is not installed",
            hint="pip install 'lever[plot]' (or matplotlib); ./dev sets it up with the other extras",
        ) from None
    matplotlib.use("Agg")  # why: no display needed, works headless and in batch jobs
    import matplotlib.pyplot as plt

    return plt


def _style() -> dict:
    """rcParams for a figure read at a paper's column width."""
    return {
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "lines.linewidth": 1.2,
        "lines.markersize": 3.5,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "lever",  # why: the same figure gives the same SVG bytes
        "pdf.compression": 9,
    }


def _colours(series: list[Series]) -> dict[str, str]:
    colours, i = {}, 0
    for s in series:
        if s.role == "baseline":
            colours[s.name] = BASELINE_COLOUR
        elif s.role == "zero-shot":
            colours[s.name] = ZERO_SHOT_COLOUR
        else:
            colours[s.name] = OKABE_ITO[i % len(OKABE_ITO)]
            i += 1
    return colours


MARKERS = ["o", "s", "^", "D", "v", "P", "X"]  # the second pass through the palette changes the marker


def render(data: ShotFigure | CurvesFigure, width: float | None = None):
    """A matplotlib Figure of `data` (not saved): tests read the drawn lines back from it."""
    plt = pyplot()
    with plt.rc_context(_style()):
        if isinstance(data, CurvesFigure):
            return _render_curves(plt, data, width or PAGE_WIDTH)
        return _render_shots(plt, data, width or COLUMN_WIDTH)


def draw(data: ShotFigure | CurvesFigure, path: Path, width: float | None = None) -> Path:
    """Render `data` into `path` (PNG, PDF or SVG by its extension); the folder is made when missing."""
    path = check_path(path)
    plt = pyplot()
    fig = render(data, width)
    ext = path.suffix.lower()
    # why: no version stamp in the file, so the same figure gives the same bytes under another matplotlib
    meta = {"Software": None} if ext == ".png" else {"Creator": None} if ext == ".pdf" else {}
    extra = {"pil_kwargs": {"optimize": True}} if ext == ".png" else {}
    try:
        with plt.rc_context(_style()):  # written whole or not at all
            atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext[1:], dpi=DPI, bbox_inches="tight", metadata=meta, **extra))
    except OSError as err:
        raise LeverError(
            f"{path}: the figure cannot be written ({os_reason(err)})", hint="choose another file or folder"
        ) from None
    finally:
        plt.close(fig)
    return path


def _render_shots(plt, data: ShotFigure, width: float):
    fig, ax = plt.subplots(figsize=(width, width * 0.72), layout="constrained")
    colours = _colours(data.series)
    xs = sorted({p.shots for s in data.series for p in s.points if s.role != "zero-shot"}) or [0]
    plans = [s for s in data.series if s.role == "plan"]
    dodge = 0.06 if data.kind == "delta" and len(plans) > 1 else 0.0  # why: overlapping error bars hide each other
    for s in data.series:
        colour = colours[s.name]
        if s.role == "zero-shot":  # the same prompt at every shot count: a level with its band
            p = s.points[0]
            ax.axhline(p.value, color=colour, linestyle=":", linewidth=1.0, label=f"{s.name} (0 shots)")
            if p.lo is not None and p.hi is not None:
                ax.axhspan(p.lo, p.hi, color=colour, alpha=0.12, linewidth=0)
            continue
        k = plans.index(s) if s in plans else 0
        offset = (k - (len(plans) - 1) / 2) * dodge
        x = [p.shots + offset for p in s.points]
        y = [p.value for p in s.points]
        style = {"linestyle": "--"} if s.role == "baseline" else {}
        marker = MARKERS[(k // len(OKABE_ITO)) % len(MARKERS)] if s.role == "plan" else "o"
        label = f"{s.name} (baseline)" if s.role == "baseline" and s.name != "baseline" else s.name
        (line,) = ax.plot(x, y, color=colour, marker=marker, label=label, zorder=3, **style)
        line.set_gid(f"series:{s.name}")  # why: tests find the line of a plan by name
        lo = [p.lo if p.lo is not None else p.value for p in s.points]
        hi = [p.hi if p.hi is not None else p.value for p in s.points]
        if data.kind == "shots":
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        else:
            ax.errorbar(x, y, yerr=[[v - a for v, a in zip(y, lo)], [b - v for v, b in zip(y, hi)]], fmt="none",
                        ecolor=colour, elinewidth=1.0, capsize=2)  # fmt: skip
            weak = [(a, b) for a, b, p in zip(x, y, s.points) if p.mark != "significant"]
            if weak:  # within noise: hollow, as the table's `~`
                ax.plot(*zip(*weak), linestyle="none", marker=marker, markerfacecolor="white", markeredgecolor=colour, zorder=4)
    if data.kind == "delta":
        ax.axhline(0.0, color=BASELINE_COLOUR, linewidth=0.8, linestyle="--", label=data.baseline)
    ax.set_xticks(xs)
    ax.set_xlabel("shots (in-context demonstrations)")
    ax.set_ylabel(data.ylabel)
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    n = len(data.series) + (data.kind == "delta")
    if n > 3:  # below the axes: a legend inside would cover lines
        fig.legend(loc="outside lower center", ncol=min(3, n), frameon=False)
    else:
        ax.legend(frameon=False)
    if data.kind == "delta":
        ax.set_title(f"filled: Holm-adjusted p < {ALPHA:g}; hollow: not significant", fontsize=7)
    return fig


def _render_curves(plt, data: CurvesFigure, width: float):
    if not data.panels:
        raise LeverError(
            "no training metrics to draw: the runs logged none of the metrics asked for",
            hint="metrics a panel can show: " + ", ".join(k for k, _ in CURVE_METRICS),
        )
    ncols = 3 if len(data.panels) > 4 else 2 if len(data.panels) > 1 else 1
    nrows = math.ceil(len(data.panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.75 * nrows + 0.4), sharex=True, squeeze=False, layout="constrained")
    plans = list(dict.fromkeys(c.plan for c in data.curves))
    colours = _colours([Series(p, "baseline" if p == "baseline" else "plan", []) for p in plans])
    for ax, (metric, label) in zip(axes.flat, data.panels):
        seen = set()
        for c in (c for c in data.curves if c.metric == metric):
            many = sum(1 for d in data.curves if d.plan == c.plan and d.metric == metric) > 1
            (line,) = ax.plot(c.x, c.y, color=colours[c.plan], alpha=0.7 if many else 1.0, linewidth=1.0,
                              label=c.plan if c.plan not in seen else None)  # fmt: skip
            line.set_gid(f"curve:{c.plan}:{c.seed}:{metric}")
            seen.add(c.plan)
            if c.selected is not None:
                ax.plot([c.selected], [c.y[c.x.index(c.selected)]], marker="*", markersize=8, color=colours[c.plan],
                        markeredgecolor="black", markeredgewidth=0.5, linestyle="none", zorder=4)  # fmt: skip
        for s in data.stage_starts:
            ax.axvline(s, color="#999999", linestyle=":", linewidth=0.8)
        ax.set_title(label)
        ax.grid(linewidth=0.4, alpha=0.5)
    for ax in list(axes.flat)[len(data.panels) :]:
        ax.set_visible(False)
    for col in range(ncols):  # the lowest drawn panel of each column carries the x axis
        shown = [ax for ax in axes[:, col] if ax.get_visible()]
        if shown:
            shown[-1].xaxis.set_tick_params(labelbottom=True)
            shown[-1].set_xlabel("epoch (all stages)")
    handles = [plt.Line2D([], [], color=colours[p], label=p) for p in plans]
    handles.append(plt.Line2D([], [], marker="*", markersize=8, color="white", markerfacecolor="#888888",
                              markeredgecolor="black", markeredgewidth=0.5, label="selected checkpoint"))  # fmt: skip
    if data.stage_starts:
        handles.append(plt.Line2D([], [], color="#999999", linestyle=":", label="next stage"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), frameon=False)
    return fig
