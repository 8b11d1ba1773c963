"""`lever plot shots|delta|curves`: the figures of lever.report.figures, drawn into a PNG, PDF or SVG file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lever.errors import LeverError
from lever.report import figures
from lever.report.leaderboard import load_leaderboard
from lever.report.reports import load_comparison
from lever.report.results import check_known, plan_runs
from lever.report.significance import N_RESAMPLES

from ._common import runs_dir, workspace
from .report import METRIC_OPTION, _table_options

plot_app = typer.Typer(
    help="Figures for a paper: accuracy against shots, the difference from a baseline, training curves.\n\n"
    "Each writes a PNG, PDF or SVG (by the file's extension) with the numbers the tables print; needs the plot extra "
    "(pip install 'lever\\[plot]').",
    no_args_is_help=True,
)

OUT = typer.Option(..., "--out", "-o", help="The figure file: .png, .pdf or .svg")
WIDTH = typer.Option(None, "--width", min=1.0, help="Figure width in inches (default: 3.5, one paper column; curves 7)")
JSON = typer.Option(False, "--json", help="Also print the figure's data as JSON (the numbers drawn)")
SPLIT = typer.Option("val", "--split", help="Which evaluation split: val, train or test (the held-out questions)")
RESAMPLES = typer.Option(N_RESAMPLES, "--resamples", help="Bootstrap resamples and permutations (as the table's)")


def _start(out: Path) -> None:
    """Refuse a file name of another format, or a missing matplotlib, before any table is computed."""
    figures.check_path(out)
    figures.pyplot()


def _finish(data, out: Path, width: float | None, as_json: bool) -> None:
    path = figures.draw(data, out, width)
    if as_json:
        typer.echo(json.dumps(figures.figure_json(data), indent=2, allow_nan=False))
    typer.echo(f"wrote {path}", err=as_json)


def shots(
    plans: list[str] = typer.Argument(
        None, help="Plans to draw (names, files, plan@HASH); default: every plan the leaderboard ranks"
    ),
    out: Path = OUT,
    baseline: str = typer.Option("baseline", "--baseline", "-b", help="The plan drawn as the baseline (black, dashed)"),
    split: str = SPLIT,
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="The plans of this dataset (as leaderboard's)"),
    metric: str | None = METRIC_OPTION,
    resamples: int = RESAMPLES,
    width: float | None = WIDTH,
    as_json: bool = JSON,
) -> None:
    """Accuracy against the number of shots, one line per plan, its 95% interval as a band.

    The points and bands are the cells of `lever leaderboard` with the same arguments; a plan evaluated at 0 shots only
    (baselines/zero_shot) is a dotted level across the plot; the baseline is black and dashed.

    Example: [bold]lever plot shots -o shots.pdf[/]   or   [bold]lever plot shots baseline plan5 -o shots.png[/]
    """
    _start(out)
    _table_options(split, resamples, metric, False, False, False, False)
    lb = load_leaderboard(
        plans or [], runs_dir(), workspace().plans_dir, split, metric=metric, n_resamples=resamples, only_dataset=dataset
    )
    _finish(figures.shot_curves(lb, baseline), out, width, as_json)


def delta(
    plans: list[str] = typer.Argument(..., help="Plans to set against the baseline (names, files, plan@HASH)"),
    out: Path = OUT,
    baseline: str = typer.Option("baseline", "--baseline", "-b", help="The reference plan of every delta"),
    split: str = SPLIT,
    metric: str | None = METRIC_OPTION,
    resamples: int = RESAMPLES,
    width: float | None = WIDTH,
    as_json: bool = JSON,
) -> None:
    """Each plan minus the baseline per shot count, with its paired 95% interval.

    The numbers are those of `lever compare PLANS --baseline B`; a filled point is significant after Holm's
    correction (the table's "sig. (adj)"), a hollow one is not.

    Example: [bold]lever plot delta plan5 plan5_rank --baseline baselines/similar_both -o delta.pdf[/]
    """
    _start(out)
    _table_options(split, resamples, metric, False, False, False, False)
    cmp = load_comparison(plans, baseline, runs_dir(), workspace().plans_dir, split, metric=metric, n_resamples=resamples)
    bad = [f"{c.name}: {c.missing} ({c.command})" for c in cmp.plans if c.missing]
    if bad:
        raise LeverError("nothing to draw for " + "; ".join(bad), hint="run what each names, or leave the plan out")
    _finish(figures.deltas(cmp), out, width, as_json)


def curves(
    plans: list[str] = typer.Argument(..., help="Plans whose training curves share the axes (names, files, plan@HASH)"),
    out: Path = OUT,
    metric: list[str] = typer.Option(
        None,
        "--metric",
        "-m",
        help="A metrics.jsonl key to draw (repeatable); default: " + ", ".join(k for k, _ in figures.CURVE_METRICS),
    ),
    width: float | None = WIDTH,
    as_json: bool = JSON,
) -> None:
    """Training curves of several plans on shared axes, one panel per metric, every seed a line, the selected
    checkpoint starred, dotted lines where a stage ends.

    Example: [bold]lever plot curves plan5 baseline -o curves.png[/]
    """
    _start(out)
    root, plans_dir = runs_dir(), workspace().plans_dir
    for p in plans:
        check_known(p, plans_dir, root)
    found = [plan_runs(p, root, plans_dir) for p in plans]
    bad = [f"{pr.name}: {pr.missing} ({pr.command})" for pr in found if not pr.runs]
    if bad:
        raise LeverError("no runs to draw for " + "; ".join(bad), hint="run what each names, or leave the plan out")
    _finish(figures.training_curves(found, metric or None), out, width, as_json)


plot_app.command("shots")(shots)
plot_app.command("delta")(delta)
plot_app.command("curves")(curves)
