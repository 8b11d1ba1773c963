"""Tables that fit a terminal: long columns fold into numbered notes, several plans' columns into several tables,
names and hashes are never cut, --wide and output without a width keep one record a line (COLUMNS=100)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from test_report import H5, HB, PLAN5_SPEC, PLAN7_SPEC, comparison, runs, write_run  # noqa: F401 (a fixture)

from lever.keys import content_key
from lever.report.tables import fold_columns, grid_width, plain_grid, render_plain, split_columns

HEADERS = ["plan", "hash", "acc", "flags", "inputs"]
ROWS = [
    ["plan5", "abc123def456", "60.00", "near-zero advantages", "data:1234 feats:5678"],
    ["baseline", "0123456789ab", "50.00", "—", "data:1234 feats:5678"],
]


def test_grid_width_by_hand():
    # widest cells 8 + 12 + 5 + 20 + 20 = 65, plus 4 gaps of 2 = 73: what plain_grid prints
    assert grid_width(HEADERS, ROWS) == 73 == max(len(line) for line in plain_grid(HEADERS, ROWS).splitlines())
    assert grid_width(HEADERS, ROWS, (3, 4)) == 65 + 12 + 4


def test_fold_columns_one_at_a_time_until_it_fits():
    assert fold_columns(HEADERS, ROWS, ["inputs", "flags"], 73) == (HEADERS, ROWS, [])  # fits: as it is
    assert fold_columns(HEADERS, ROWS, ["inputs", "flags"], None) == (HEADERS, ROWS, [])  # no width: as it is
    # 72: inputs leave (73 - 22 + 6 for "note" = 57 fits); the same value twice is one note
    headers, rows, notes = fold_columns(HEADERS, ROWS, ["inputs", "flags"], 72)
    assert headers == ["plan", "hash", "acc", "flags", "note"]
    assert [r[-1] for r in rows] == ["1", "1"] and notes == ["[1] inputs: data:1234 feats:5678"]
    # 40: flags leave too; "—" says nothing, so baseline's row names one note
    headers, rows, notes = fold_columns(HEADERS, ROWS, ["inputs", "flags"], 40)
    assert headers == ["plan", "hash", "acc", "note"] and [r[-1] for r in rows] == ["1,2", "1"]
    assert notes == ["[1] inputs: data:1234 feats:5678", "[2] flags: near-zero advantages"]
    assert rows[0][:2] == ["plan5", "abc123def456"]  # names and hashes whole


def test_split_columns_keeps_the_fixed_columns_in_every_piece():
    headers = ["shots", "base", "a", "Δa", "b", "Δb", "c", "Δc"]
    rows = [["1", "50.00", "60.00", "+10.00", "55.00", "+5.00", "40.00", "-10.00"]]
    groups = [[2, 3], [4, 5], [6, 7]]
    assert split_columns(headers, rows, groups, None) == [list(range(8))]
    # shots 5 + base 5 + a's 5 + 6 = 21 content, 3 gaps: 27; with b's 5 + 5 and 2 gaps more: 41
    assert split_columns(headers, rows, groups, 41) == [[0, 1, 2, 3, 4, 5], [0, 1, 6, 7]]
    assert split_columns(headers, rows, groups, 40) == [[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 6, 7]]
    assert split_columns(headers, rows, groups, 10) == [[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 6, 7]]  # too narrow: one each


@pytest.fixture
def narrow(lever, runs: Path, monkeypatch):  # noqa: F811 (the fixture)
    """`lever` at COLUMNS=100 on the report tests' runs, and a plan with a long name."""
    write_run(runs, "baselines/similar_both", 0, spec=PLAN5_SPEC, accs={s: [1] * 10 for s in (1, 2, 3, 4)},
              flags=["the pool's most similar items by both features, most similar last"])  # fmt: skip
    monkeypatch.setenv("LEVER_RUNS", str(runs))
    monkeypatch.chdir(runs.parent)
    (runs.parent / "plans").mkdir(exist_ok=True)
    monkeypatch.setenv("COLUMNS", "100")
    return lever


def test_runs_fit_100_columns_with_names_and_hashes_whole(narrow, monkeypatch):
    res = narrow("runs")
    assert res.code == 0, res.text
    lines = res.out.splitlines()
    table = [line for line in lines if not line.startswith("[")]
    assert max(map(len, table)) <= 100 and lines[1].split()[-1] == "note" and "flags" not in lines[1]
    long = next(line for line in lines if line.startswith("baselines/similar_both "))
    assert H5 in long and long.split()[-1] == "1"
    assert "[1] flags: the pool's most similar items by both features, most similar last" in lines
    assert "[2] flags: guardrail: kl above 0.5 at grpo epoch 3" in lines
    wide = narrow("runs", "--wide").out.splitlines()  # every column, one run a line
    assert "flags" in wide[1] and "inputs" in wide[1] and max(map(len, wide)) > 100
    assert any(line.startswith("plan5 ") and "guardrail: kl above 0.5" in line for line in wide)
    monkeypatch.delenv("COLUMNS")  # to a file or pipe: as wide as it is, one run a line
    assert narrow("runs").out == "\n".join(wide) + "\n"


def test_runs_on_a_100_column_terminal(narrow, monkeypatch):
    import os

    def runs_root() -> Path:
        return Path(os.environ["LEVER_RUNS"])

    import lever_cli.report as report
    from lever_cli._console import _Console

    long = "plan5@grpo.lr=1e-5,grpo.kl.beta=0.1"  # a sweep's derived plan is named like this: 35 characters
    write_run(runs_root(), long, 0, spec=PLAN5_SPEC, accs={s: [1] * 10 for s in (1, 2, 3, 4)})
    term = _Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(report, "console", term)
    assert narrow("runs").code == 0
    lines = term.file.getvalue().splitlines()
    assert max(map(len, lines)) <= 100  # the other columns wrap; the name and the hash stay whole
    assert any(long in line and H5 in line for line in lines)
    assert any("baselines/similar_both" in line and H5 in line for line in lines)
    for name, h in (("baseline ", HB), ("plan5 ", H5), ("plan6 ", H5), ("plan7_1 ", content_key(PLAN7_SPEC))):
        assert any(line.startswith(name) and h in line for line in lines), name  # the run folders' spec hashes
    assert any(line.startswith("[1] flags: the pool's most similar items") for line in lines)


def test_compare_fits_100_columns(narrow, runs: Path):  # noqa: F811
    res = narrow("compare", "plan5", "plan7_1", "baselines/similar_both", "--resamples", "200")
    assert res.code == 0, res.text
    lines = res.out.splitlines()
    pieces = [i for i, line in enumerate(lines) if line.startswith("shots ")]
    assert len(pieces) >= 2  # the shot table, cut into tables of the plans that fit beside shots and baseline
    for i in pieces:
        assert len(lines[i]) <= 100 and lines[i].split()[:2] == ["shots", "baseline"]
    headers = " ".join(lines[i] for i in pieces)
    assert all(f" {name} " in f"{headers} " for name in ("plan5", "plan7_1", "baselines/similar_both"))
    training = lines.index("Training (selected checkpoint)")
    assert lines[training + 1].split()[-1] == "note" and len(lines[training + 1]) <= 100
    assert "[1] reason: lowest val/loss" in res.out
    # the same numbers as --json: a cell of the second piece
    data = json.loads(narrow("compare", "plan5", "plan7_1", "baselines/similar_both", "--json", "--resamples", "200").out)
    assert data["rows"][1]["cells"]["baselines/similar_both"]["accuracy"] == pytest.approx(100.0)
    wide = narrow("compare", "plan5", "plan7_1", "baselines/similar_both", "--resamples", "200", "--wide").out
    assert sum(line.startswith("shots ") for line in wide.splitlines()) == 1 and "flags" in wide


def test_render_plain_without_a_width_is_one_table(runs: Path):  # noqa: F811
    text = render_plain(comparison(runs, ("plan5", "plan7_1")))
    assert sum(line.startswith("shots ") for line in text.splitlines()) == 1 and "reason" in text and "note" not in text
    narrow = render_plain(comparison(runs, ("plan5", "plan7_1")), width=60)
    assert sum(line.startswith("shots ") for line in narrow.splitlines()) == 2


def test_leaderboard_fits_100_columns(narrow, monkeypatch):
    res = narrow("leaderboard", "--resamples", "200")
    assert res.code == 0, res.text
    lines = res.out.splitlines()
    pieces = [i for i, line in enumerate(lines) if line.startswith("plan ")]
    assert len(pieces) == 2  # the accuracy table, cut into two (these rows hold no copy rates: no copy table)
    for i in pieces:
        table = lines[i : i + 6]  # headers, rule, four plans
        assert max(map(len, table)) <= 100 and any(line.startswith("baselines/similar_both ") for line in table)
    shown = " ".join(lines[i] for i in pieces)
    assert shown.split() == ["plan", "1", "2", "3", "plan", "4", "mean", "1-4"]  # every column, in order
    wide = narrow("leaderboard", "--resamples", "200", "--wide").out
    assert sum(line.startswith("plan ") for line in wide.splitlines()) == 1
    monkeypatch.delenv("COLUMNS")
    assert narrow("leaderboard", "--resamples", "200").out == wide


def test_runs_fit_100_columns_with_a_zero_shot_column(narrow, runs: Path, monkeypatch):  # noqa: F811
    """A zero-shot run adds a val@0 column: with every fold column gone the table is still wider than 100 (110 here),
    so its columns close up to one space, in a pipe and on a terminal (where a cell would otherwise wrap)."""
    import lever_cli.report as report
    from lever_cli._console import _Console

    write_run(runs, "baselines/similar_question", 0, spec=PLAN7_SPEC, accs={s: [1] * 10 for s in (1, 2, 3, 4)})
    write_run(runs, "baselines/zero_shot", 0, spec=PLAN7_SPEC, accs={0: [0] * 10})
    lines = narrow("runs").out.splitlines()
    table = [line for line in lines[1:] if not line.startswith(("[", "*"))]  # below the title (the runs folder)
    assert table[0].split()[:7] == ["plan", "hash", "seed", "state", "selected", "val@0", "val@1"]
    assert max(map(len, table)) <= 100, "\n".join(table)
    assert any(line.startswith("baselines/similar_question ") for line in table)
    term = _Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(report, "console", term)
    assert narrow("runs").code == 0
    shown = term.file.getvalue().splitlines()[1:]
    rows = shown[2 : shown.index("") if "" in shown else None]  # below the header and its rule, above the notes
    rows = [line for line in rows if not line.startswith(("[", "*"))]
    assert len(rows) == 8 and all(line.startswith(("baseline", "plan")) for line in rows), "\n".join(shown)
    assert max(map(len, shown)) <= 100  # one line a run: no cell wrapped onto a second line
