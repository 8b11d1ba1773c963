"""The `lever` command: a thin Typer app. It parses, calls `lever`, renders; no logic lives here."""

from __future__ import annotations

import signal
import sys
import threading

import click
import typer
from rich.text import Text

from lever import __version__
from lever.errors import LeverError

from . import report, run, spec
from ._common import set_workspace_flag
from ._console import err_console
from .data import data_app

app = typer.Typer(
    name="lever",
    help="Declarative plans for training and evaluating in-context demonstration selectors.\n\n"
    "Without a workspace file (lever.toml, $LEVER_WORKSPACE or --workspace) every command runs on the bundled benchmark.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"lever {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    workspace: str | None = typer.Option(
        None,
        "--workspace",
        "-w",
        help="Workspace file (default: $LEVER_WORKSPACE, then ./lever.toml, else the bundled benchmark)",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version"),
) -> None:
    set_workspace_flag(workspace)


spec.register(app)
run.register(app)
report.register(app)
app.add_typer(data_app, name="data")


def main() -> None:
    """Console-script entry: run the app, turning a LeverError into a short message and its exit code."""
    if threading.current_thread() is threading.main_thread():
        # A parent may start us with SIGINT ignored (a shell's background job); Ctrl-C must still stop a run cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into a returned 130 in this mode
            raise KeyboardInterrupt
    except LeverError as err:
        err_console.print(Text("error: ", style="bold red") + Text(str(err)), highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as ex:
        ex.show()
        sys.exit(ex.exit_code)
    except click.exceptions.Exit as ex:
        sys.exit(ex.exit_code)
