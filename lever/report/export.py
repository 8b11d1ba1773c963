"""Exports of a Comparison for scripts and papers: JSON, CSV, Markdown, LaTeX (booktabs tabular)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from typing import Any

from .tables import (
    COPY_NOTE,
    DIFF_HEADERS,
    TRAINING_HEADERS,
    Comparison,
    copy_missing_lines,
    copy_table,
    diff_table,
    failures_line,
    fixed,
    missing_lines,
    note_lines,
    runs_line,
    shot_table,
    shots_used_table,
    title,
    training_table,
)

FORMATS = ("json", "markdown", "csv", "latex")

CSV_COLUMNS = [
    "split",
    "baseline",
    "plan",
    "spec_hash",
    "overrides",
    "is_baseline",
    "shots",
    "accuracy",
    "std",
    "n_seeds",
    "n_questions",
    "delta",
    "ci_lo",
    "ci_hi",
    "p_permutation",
    "p_holm",
    "p_mcnemar",
    "interval",
    "resamples",
    "borderline",
    "acc_lo",
    "acc_hi",
    "within_noise",
    "best",
    "missing",
    "copy_rate",
    "majority_vote",
]


def _clean(x: Any) -> Any:
    """NaN and infinities become null so the JSON is strict."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _csv_value(x: Any) -> Any:
    """Floats to 6 significant digits, so binary noise (44.900000000000006) never reaches a CSV cell."""
    return float(f"{x:.6g}") if isinstance(x, float) else x


def to_dict(cmp: Comparison) -> dict:
    """The comparison as plain JSON-able data (each cell also carries ``within_noise``)."""
    d = asdict(cmp)
    for row, drow in zip(cmp.rows, d["rows"]):
        for name, cell in row.cells.items():
            drow["cells"][name]["within_noise"] = cell.within_noise
    return _clean(d)


def to_json(cmp: Comparison) -> str:
    return json.dumps(to_dict(cmp), indent=2, allow_nan=False, default=str) + "\n"


def to_csv(cmp: Comparison) -> str:
    """Long format: one line per (plan, shot row), columns ``CSV_COLUMNS``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in cmp.rows:
        for col in cmp.plans:
            c = row.cells[col.name]
            line = _clean(
                {
                    "split": cmp.split,
                    "baseline": cmp.baseline,
                    "plan": col.name,
                    "spec_hash": col.spec_hash,
                    "overrides": " ".join(col.overrides),
                    "is_baseline": col.baseline,
                    "shots": row.label,
                    "accuracy": c.accuracy,
                    "std": c.std,
                    "n_seeds": c.n_seeds,
                    "n_questions": c.n_questions,
                    "delta": c.delta,
                    "ci_lo": c.lo,
                    "ci_hi": c.hi,
                    "p_permutation": c.p,
                    "p_holm": c.p_holm,
                    "p_mcnemar": c.p_mcnemar if c.p_mcnemar_seeds is None else " ".join(f"{x:.6g}" for x in c.p_mcnemar_seeds),
                    "interval": c.interval,
                    "resamples": c.resamples,
                    "borderline": c.borderline,
                    "acc_lo": c.acc_lo,
                    "acc_hi": c.acc_hi,
                    "within_noise": c.within_noise,
                    "best": c.best,
                    "missing": col.missing or "",
                    "copy_rate": c.copy_rate,
                    "majority_vote": c.majority_vote,
                }
            )
            w.writerow({k: _csv_value(v) for k, v in line.items()})
    return buf.getvalue()


def _md_table(headers: list[str], rows: list[list[str]], numeric: bool = False) -> str:
    """A pipe table; with ``numeric``, every column after the first is right-aligned."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---"] + ["---:" if numeric else "---"] * (len(headers) - 1)
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(cmp: Comparison) -> str:
    headers, body = shot_table(cmp)
    parts = [f"### {title(cmp)}", "", _md_table(headers, body, numeric=True), "", f"_{cmp.footnote}_", "", runs_line(cmp)]
    parts += [f"\n{line}" for line in note_lines(cmp)]
    if failures_line(cmp):
        parts += ["", failures_line(cmp)]
    if cmp.shots_used:
        parts += ["", "### Demonstrations used", "", _md_table(*shots_used_table(cmp))]
    copying = copy_table(cmp)
    if copying:
        parts += ["", f"### Beyond copying (%) on {cmp.split}", "", _md_table(*copying, numeric=True), "", f"_{COPY_NOTE}_"]
    if copy_missing_lines(cmp):
        parts += ["", *copy_missing_lines(cmp)]
    if cmp.training:
        parts += ["", "### Training (selected checkpoint)", "", _md_table(TRAINING_HEADERS, training_table(cmp))]
    if cmp.spec_diffs:
        parts += ["", f"### Spec differences vs {cmp.baseline}", "", _md_table(DIFF_HEADERS, diff_table(cmp))]
    if missing_lines(cmp):
        parts += ["", "### Missing", "", *(f"- {line}" for line in missing_lines(cmp))]
    return "\n".join(parts) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(cmp: Comparison) -> str:
    """The shot table as a booktabs ``tabular`` fragment: accuracy per plan and Δ per non-baseline plan.

    Bold = best in row; a superscript ~ marks a delta within noise (95% CI includes 0).
    Plans not run or not evaluated are left out and named in a comment line.
    """
    cols = [c for c in cmp.plans if c.baseline or not c.missing]
    spec = "l" + "".join("r" if col.baseline else "rr" for col in cols)
    header = ["shots"]
    for col in cols:
        header.append(latex_escape(col.name))
        if not col.baseline:
            header.append(r"$\Delta$")
    size = f"{cmp.n_questions} questions, " if cmp.n_questions else ""
    lines = [
        f"% accuracy (%) on {latex_escape(cmp.split)}, {size}delta vs {latex_escape(cmp.baseline)} in points; "
        "bold = best in row; ^{\\sim} = within noise (95\\% paired bootstrap CI includes 0); " + latex_escape(cmp.footnote),
        *(f"% {latex_escape(line)}" for line in note_lines(cmp)),
        *(f"% missing: {latex_escape(c.name)} ({c.missing})" for c in cmp.plans if c not in cols),
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(cmp.rows):
        if row.label == "avg" and i > 0:
            lines.append(r"\midrule")
        cells = [latex_escape(row.label)]
        for col in cols:
            c = row.cells[col.name]
            if c.accuracy is None:
                acc = "--"
            else:
                acc = fixed(c.accuracy) + (f" $\\pm$ {fixed(c.std)}" if c.std is not None else "")
                acc = f"\\textbf{{{acc}}}" if c.best else acc
            cells.append(acc)
            if not col.baseline:
                if c.delta is None:
                    cells.append("--")
                else:
                    mark = "^{\\sim}" if c.within_noise else ""
                    cells.append(f"${fixed(c.delta, sign=True)}{mark}$")
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\midrule")
    improved = ["improved"]
    for col in cols:
        improved.append("")
        if not col.baseline:
            improved.append(f"{col.improved}/{col.n_shots}")
    lines += [" & ".join(improved) + r" \\", r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def export(cmp: Comparison, fmt: str) -> str:
    """Render ``cmp`` in one of ``FORMATS``."""
    return {"json": to_json, "markdown": to_markdown, "csv": to_csv, "latex": to_latex}[fmt](cmp)
