"""Report commands: compare, leaderboard, report, runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer
from rich.markup import escape

from lever.errors import LeverError
from lever.eval.vqa import VQA_METRICS
from lever.report import figures
from lever.report.export import export
from lever.report.leaderboard import export as export_leaderboard
from lever.report.leaderboard import load_leaderboard, load_leaderboards_by
from lever.report.leaderboard import render_plain as leaderboard_plain
from lever.report.reports import load_comparison, load_comparisons_by
from lever.report.results import RunData, check_known, damage_summary, plan_runs, scan_runs
from lever.report.significance import N_RESAMPLES
from lever.report.sparkline import spark_rows
from lever.report.tables import (
    TRAINING_FOLD,
    TRAINING_HEADERS,
    closed_gap,
    compact_table,
    fixed,
    fmt_num,
    fold_columns,
    plain_grid,
    render_plain,
    render_rich,
    training_rows,
)
from lever.runs.layout import RunDir
from lever.runs.sweep import member_names

from ._common import runs_dir as runs_root
from ._common import workspace
from ._console import console, fit_width
from ._progress import tests_progress

SPLITS = ("val", "train", "test")


WHOLE = ("plan", "hash", "seed")  # columns never cut or wrapped


def _show(title: str, headers: list[str], rows: list[list[str]], fold: list[str] = (), wide: bool = False) -> None:
    """A table: rich on a terminal, fixed-width plain text otherwise; the `fold` columns become notes below it when
    it is wider than the terminal (or COLUMNS) and not `wide`."""
    width = fit_width(console, wide)
    headers, rows, notes = fold_columns(headers, rows, list(fold), width)
    gap = closed_gap(headers, rows, width)
    if console.is_terminal:
        t = compact_table(escape(title), gap)
        for h in headers:
            t.add_column(escape(h), no_wrap=h in WHOLE, overflow="fold")  # the others wrap, never an ellipsis
        for r in rows:
            t.add_row(*(escape(c) for c in r))
        console.print(t)
        for line in notes:
            console.print(escape(line), highlight=False)
    else:
        typer.echo("\n".join([title, plain_grid(headers, rows, gap), *notes]))


WIDE = typer.Option(False, "--wide", help="Every column in the table, however wide (default: fit the terminal)")


# `--metric` of compare and leaderboard: tables re-scored from the stored answers
METRIC_OPTION = typer.Option(
    None,
    "--metric",
    help="Score every run's stored answers again with this VQA metric (classic, vqa-latest, lever-plus); "
    "default: as each was evaluated",
)


# `--by` of compare and leaderboard: one table per answer (or question) type, over that type's questions
BY_OPTION = typer.Option(
    None,
    "--by",
    metavar="FIELD",
    help="One table per answer_type (or question_type), each over that type's questions, as the official VQA evaluator",
)


def _emit_groups(by: str, texts: dict[str, str], fmt: str | None) -> None:
    """Print one output per type: a heading per type (JSON: one object keyed by type; CSV: a first column)."""
    if fmt == "json":
        typer.echo(json.dumps({"by": by, "groups": {t: json.loads(x) for t, x in texts.items()}}, indent=2))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for i, (t, text) in enumerate(texts.items()):
            rows = list(csv.reader(io.StringIO(text)))
            writer.writerows([[by, *rows[0]]] if i == 0 else [])
            writer.writerows([t, *r] for r in rows[1:])
        typer.echo(out.getvalue(), nl=False)
    else:
        mark = {"markdown": "#### ", "latex": "% "}.get(fmt or "", "")
        for t, text in texts.items():
            typer.echo(f"{mark}{by} = {t}\n\n{text}", nl=False)


def _table_options(
    split: str, resamples: int, metric: str | None, as_json: bool, markdown: bool, as_csv: bool, latex: bool
) -> list[str]:
    """Check the options `compare` and `leaderboard` share; the output format asked for ([] = a table)."""
    if split not in SPLITS:
        raise LeverError(f"--split {split!r} is not a split", hint=f"use one of: {', '.join(SPLITS)}")
    formats = [f for f, on in (("json", as_json), ("markdown", markdown), ("csv", as_csv), ("latex", latex)) if on]
    if len(formats) > 1:
        raise LeverError(f"choose one output format, got {', '.join('--' + f for f in formats)}")
    if resamples < 1:
        raise LeverError(f"--resamples {resamples} must be at least 1", hint=f"the default is {N_RESAMPLES}")
    if metric is not None and metric not in VQA_METRICS:
        raise LeverError(f"--metric {metric!r} is not a VQA metric", hint=f"use one of: {', '.join(VQA_METRICS)}")
    return formats


def compare(
    plans: list[str] = typer.Argument(
        ..., help="Plans to compare: names as in plans/ (plan5, plan7_1) or files; plan5@HASH picks the runs of one spec hash"
    ),
    baseline: str = typer.Option("baseline", "--baseline", "-b", help="The reference plan of every delta"),
    split: str = typer.Option("val", "--split", help="Which evaluation split: val, train or test (the held-out questions)"),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON"),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown tables"),
    as_csv: bool = typer.Option(False, "--csv", help="Print one CSV line per plan and shot row"),
    latex: bool = typer.Option(False, "--latex", help="Print a booktabs tabular fragment of the shot table"),
    resamples: int = typer.Option(
        N_RESAMPLES, "--resamples", help="Bootstrap resamples and permutations per delta (more where a verdict is borderline)"
    ),
    metric: str | None = METRIC_OPTION,
    wide: bool = WIDE,
    by: str | None = BY_OPTION,
) -> None:
    """Per-shot accuracy of plans against a baseline, with paired 95% intervals and p-values.

    Also the training table (selected epoch, losses, flags) and the spec keys that differ from the baseline.

    Plans not run or not evaluated show as missing, with the command to run. Each plan's runs are those
    of the plan file as it is now; runs made with overrides are named with plan@HASH (`lever runs` lists them).

    The tables fit the terminal: several plans' columns become several tables, reasons and flags become notes
    below the training table; --wide prints each table whole.

    --by answer_type: one table per answer type (VQAv2: yes/no, number, other), each over that type's questions.

    Example: [bold]lever compare plan5 plan7 plan7_1 --baseline baseline --split val[/]
    """
    formats = _table_options(split, resamples, metric, as_json, markdown, as_csv, latex)
    if by is not None:
        cmps = load_comparisons_by(
            plans, baseline, runs_root(), workspace().plans_dir, by, split, metric=metric, n_resamples=resamples
        )
        if console.is_terminal and not formats:
            for t, c in cmps.items():
                console.print(f"[bold]{by} = {escape(t)}[/]")
                render_rich(c, console, fit_width(console, wide))
            return
        texts = {t: export(c, formats[0]) if formats else render_plain(c, fit_width(console, wide)) for t, c in cmps.items()}
        _emit_groups(by, texts, formats[0] if formats else None)
        return
    with tests_progress() as progress:
        cmp = load_comparison(
            plans, baseline, runs_root(), workspace().plans_dir, split, metric=metric, n_resamples=resamples, progress=progress
        )
    if formats:
        typer.echo(export(cmp, formats[0]), nl=False)
    elif console.is_terminal:
        render_rich(cmp, console, fit_width(console, wide))
    else:
        typer.echo(render_plain(cmp, fit_width(console, wide)), nl=False)


def leaderboard(
    plans: list[str] = typer.Argument(
        None,
        help="Plans to rank: names as in plans/ (plan5, original/plan5) or files; plan5@HASH picks the runs of one "
        "spec hash. Default: every plan whose current runs are evaluated",
    ),
    split: str = typer.Option("val", "--split", help="Which evaluation split: val, train or test (the held-out questions)"),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON (copy rate and majority vote included)"),
    markdown: bool = typer.Option(False, "--markdown", help="Print Markdown tables"),
    as_csv: bool = typer.Option(False, "--csv", help="Print one CSV line per plan and column"),
    latex: bool = typer.Option(False, "--latex", help="Print a booktabs tabular fragment"),
    resamples: int = typer.Option(
        N_RESAMPLES, "--resamples", help="Bootstrap resamples and permutations per interval and test (more where borderline)"
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="Family-wise error rate of the Holm-corrected tests"),
    family: str = typer.Option(
        "column", "--family", help="What one Holm correction spans: column (each column's tests) or table (every column's)"
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="Rank the plans of this dataset (data.dataset, e.g. vqav2); default: the plans' one dataset",
    ),
    metric: str | None = METRIC_OPTION,
    by: str | None = BY_OPTION,
    wide: bool = WIDE,
) -> None:
    """Plans by shot count: accuracy with its 95% interval, the best plan marked only where the data say so.

    Rows are plans; columns are the shot counts and the mean over the shot counts with demonstrations that all share.

    A cell is the accuracy over the column's questions (seeds averaged per question) [95% bootstrap interval].

    Per column the most accurate plan is tested against each other plan (paired sign-flip test, Holm-corrected):
    * = it beats every other plan; otherwise ~ marks the plans not significantly below it (the tied group).

    A second table: copy rate and the accuracy of a model-free majority vote over the chosen demonstrations' answers.

    Plans that answered different questions are compared on the questions all of them answered (a note says so);
    plans of different datasets (data.dataset) are never paired: --dataset picks one.

    --by answer_type: one leaderboard per answer type (VQAv2: yes/no, number, other), each over its questions.

    Example: [bold]lever leaderboard baseline plan5 original/plan5 --markdown[/]
    """
    formats = _table_options(split, resamples, metric, as_json, markdown, as_csv, latex)
    if not 0.0 < alpha < 1.0:
        raise LeverError(f"--alpha {alpha} must lie between 0 and 1", hint="the default is 0.05")
    if by is not None:
        boards = load_leaderboards_by(
            plans or [], runs_root(), workspace().plans_dir, by, split, metric=metric, alpha=alpha,
            n_resamples=resamples, only_dataset=dataset, family=family,
        )  # fmt: skip
        texts = {
            t: export_leaderboard(b, formats[0]) if formats else leaderboard_plain(b, fit_width(console, wide))
            for t, b in boards.items()
        }
        _emit_groups(by, texts, formats[0] if formats else None)
        return
    lb = load_leaderboard(
        plans or [],
        runs_root(),
        workspace().plans_dir,
        split,
        metric=metric,
        alpha=alpha,
        n_resamples=resamples,
        only_dataset=dataset,
        family=family,
    )
    typer.echo(export_leaderboard(lb, formats[0]) if formats else leaderboard_plain(lb, fit_width(console, wide)), nl=False)


def _pct(x: float | None) -> str:
    return "—" if x is None else fixed(x)


def _accuracy_rows(run: RunData) -> list[list[str]]:
    rows = []
    for split in run.splits():
        for shots in run.shots(split):
            qr = run.question_results(split, shots)
            n = str(qr.n) if qr is not None else "—"
            failed = str(qr.n_failed) if qr is not None else "—"
            rows.append([f"seed-{run.seed}", split, str(shots), _pct(run.accuracy(split, shots)), n, failed])
    return rows


def report(
    plan: str = typer.Argument(
        ..., help="A plan name (plan5) or file (plans/plan5.toml); plan5@HASH for the runs of one spec hash"
    ),
    out: Path | None = typer.Option(None, "--out", help="Folder for curves.png (default: <runs>/PLAN/HASH/report)"),
    wide: bool = WIDE,
) -> None:
    """Training curves of one plan: sparklines per metric here, and curves.png (every logged metric, every seed) with the plot extra.

    Also the selected checkpoint of each seed and its accuracies per split and shot count.

    Example: [bold]lever report plan5 --out figures/plan5[/]
    """
    root = runs_root()
    check_known(plan, workspace().plans_dir, root)
    pr = plan_runs(plan, root, workspace().plans_dir)
    if not pr.runs:
        hint = f"run it first: {pr.command}" if pr.missing == "not run" else pr.command
        raise LeverError(f"plan {pr.name!r}: {pr.missing} under {root}", hint=hint)
    made = f"  overrides {' '.join(pr.overrides)}" if pr.overrides else ""
    typer.echo(f"{pr.name}  hash {pr.spec_hash}{made}  seeds {len(pr.runs)}")
    inputs = pr.runs[0].inputs
    if inputs:
        typer.echo("inputs  " + "  ".join(f"{k} {v}" for k, v in inputs.items()))
    for run in pr.runs:
        rows = [
            [r.metric, r.stage, r.spark, fmt_num(r.first), fmt_num(r.last), fmt_num(r.lo), fmt_num(r.hi)]
            for r in spark_rows(run.metrics or [])
        ]
        if rows:
            _show(f"seed-{run.seed} ({run.state})", ["metric", "stage", "curve", "first", "last", "min", "max"], rows)
        elif run.selected is not None and run.selected.epoch is None:  # a baseline selector trains nothing
            typer.echo(f"seed-{run.seed} ({run.state}): selector {run.selected.stage} trains nothing, so no curves")
        else:
            typer.echo(f"seed-{run.seed} ({run.state}): no metrics.jsonl yet")
    trows = [
        [
            t.plan,
            str(t.seed),
            t.state,
            (f"{t.stage} {t.epoch}" if t.epoch is not None else t.stage) if t.stage else "—",
            t.reason or "—",
            fmt_num(t.val_loss),
            fmt_num(t.ppo_loss),
            fmt_num(t.kl),
            fmt_num(t.adv_std),
            ", ".join(t.flags) or "—",
        ]
        for t in training_rows(pr)
    ]
    _show("Training (selected checkpoint)", TRAINING_HEADERS, trows, TRAINING_FOLD, wide)
    acc = [r for run in pr.runs for r in _accuracy_rows(run)]
    if acc:
        _show("Accuracy (%)", ["seed", "split", "shots", "accuracy", "questions", "failed"], acc)
    else:
        typer.echo(f"not evaluated: run `{pr.command}`")
    if any(r.metrics for r in pr.runs):
        if not figures.has_matplotlib():
            typer.echo("figure skipped: matplotlib is not installed (pip install 'lever[plot]')")
            return
        data = figures.training_curves([pr], figures.logged_metrics([pr]))
        path = figures.draw(data, (out or RunDir(pr.runs[0].path).report_dir) / "curves.png")
        typer.echo(f"wrote {path} ({len(data.panels)} metrics)")


def runs(wide: bool = WIDE) -> None:
    """List every run: plan, spec hash, seed, status, selected epoch, val accuracy per shot count, failed answers and inputs.

    A hash marked * was made with overrides (listed below the table); name its runs in compare and
    report as plan@HASH. A sweep's derived plans are listed by their names (plan5@grpo.lr=1e-5), which
    compare and report accept too. Inputs are content keys of the data, features and evaluation files the run used.
    A run with a damaged file is one row in state `damaged`, without numbers; the repair is listed below the table.
    Runs live under $LEVER_RUNS (default: ./runs). The table fits the terminal: inputs, then flags, then failed answers
    become numbered notes below it when it would be wider; --wide keeps them as columns. Output to a file or pipe is one run a line.

    Example: [bold]LEVER_RUNS=runs lever runs[/]
    """
    root = runs_root()
    found = scan_runs(root)
    if not found:
        typer.echo(f"no runs under {root} (start one with `lever run plans/baseline.toml`)")
        return
    shots = sorted({s for r in found for s in r.shots("val")})
    swept = member_names(root)  # a sweep's derived plans by their names: plan5@grpo.lr=1e-5
    headers = ["plan", "hash", "seed", "state", "selected", *(f"val@{s}" for s in shots), "failed", "flags", "inputs"]
    rows, notes, damaged = [], {}, []
    for r in found:
        if r.damage is not None:  # its names only: none of its numbers can be vouched for
            damaged.append(r)
            name = swept.get((r.plan, r.spec_hash), r.plan)
            blank = ["—"] * (len(shots) + 2)
            rows.append([name, r.spec_hash[:12], str(r.seed), r.state, *blank, damage_summary(r), "—"])
            continue
        sel = r.selected
        selected = (f"{sel.stage} {sel.epoch}" if sel.epoch is not None else sel.stage) if sel else "—"  # baseline: no epoch
        accs = [_pct(r.accuracy("val", s)) for s in shots]
        flags = ", ".join(r.status.flags if r.status else []) or "—"
        mark = "*" if r.overrides else ""
        name = swept.get((r.plan, r.spec_hash), r.plan)
        if r.overrides:
            notes[f"{r.plan}@{r.spec_hash}" + (f" ({name})" if name != r.plan else "")] = " ".join(r.overrides)
        inputs = " ".join(f"{k}:{str(v)[:8]}" for k, v in r.inputs.items()) or "—"
        failed = sum(c.get("failed", 0) for sp in ((r.summary or {}).get("splits") or {}).values() for c in sp.values())
        rows.append([name, r.spec_hash[:12] + mark, str(r.seed), r.state, selected, *accs, str(failed), flags, inputs])
    _show(f"Runs under {root}", headers, rows, ["inputs", "flags", "failed"], wide)
    for ref, overrides in notes.items():
        typer.echo(f"* {ref}: overrides {overrides}")
    for r in damaged:
        typer.echo(f"damaged: {r.plan}@{r.spec_hash} seed {r.seed}: {r.damage.args[0]}")
        if r.damage.hint:
            typer.echo(f"  repair: {r.damage.hint}")


def register(app: typer.Typer) -> None:
    """Add ``compare``, ``leaderboard``, ``report`` and ``runs`` to a Typer app."""
    app.command("compare")(compare)
    app.command("leaderboard")(leaderboard)
    app.command("report")(report)
    app.command("runs")(runs)
