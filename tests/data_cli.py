"""`lever data ...` on a local Typer app, for the data tests: a LeverError becomes (exit code, text), as in main()."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from lever.errors import LeverError
from lever_cli.data import data_app


def run_cli(*args: Any) -> tuple[int, str]:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    res = CliRunner().invoke(app, ["data", *map(str, args)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    if isinstance(res.exception, LeverError):
        return res.exception.exit_code, res.output + str(res.exception)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output
