"""The `lever` command: a thin Typer app. It parses, calls `lever`, renders; no logic lives here."""

from __future__ import annotations

import signal
import sys
import threading

import typer
from rich.text import Text

from lever import __version__
from lever.errors import LeverError, Terminated
from lever.threads import configure_threads

from . import report, run, spec, sweep
from ._common import set_workspace_flag
from ._console import err_console
from .data import data_app
from .plot import plot_app

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
sweep.register(app)
report.register(app)
app.add_typer(data_app, name="data")
app.add_typer(plot_app, name="plot")


_TERMINATED = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a `kill`, a scheduler's time limit) -> Terminated, a KeyboardInterrupt: whatever Ctrl-C does (a running
    run marked interrupted) happens unchanged. Further SIGTERMs are ignored while that cleanup runs."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _TERMINATED.set()
    raise Terminated()


def main() -> None:
    """Console-script entry: run the app; every user mistake ends in a short message and its exit code, never a traceback.

    LeverError -> its message (exit 2, or 1 for a failed run); a usage error -> the usage line and the error (exit 2);
    Ctrl-C -> `interrupted` (exit 130); SIGTERM -> the same cleanup, then `terminated` (exit 143 = 128 + 15).
    """
    previous = None
    _TERMINATED.clear()
    if threading.current_thread() is threading.main_thread():
        # A parent may start us with SIGINT ignored (a shell's background job); Ctrl-C must still stop a run cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main()
    finally:
        if previous is not None:  # in-process callers (tests) get their own handler back
            signal.signal(signal.SIGTERM, previous)


def _main() -> None:
    """Run the app and turn how it ended into a message and an exit code."""
    try:
        configure_threads()  # passive OpenMP waiting; threads = the cores this process may use, or LEVER_THREADS
        # An int when the app exits early: typer.Exit, or Ctrl-C inside a command (typer turns it into 130).
        code = app(standalone_mode=False, prog_name="lever")
    except LeverError as err:
        err_console.print(Text("error: ", style="bold red") + Text(str(err)), highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except typer.TyperException as ex:  # usage errors (bad option, missing argument, unknown command)
        if hasattr(ex, "show"):
            ex.show()  # the usage line, then the error
        else:
            err_console.print(f"error: {ex}", highlight=False)
        sys.exit(ex.exit_code)
    if code == 130 and _TERMINATED.is_set():  # typer turns Terminated into 130 like any KeyboardInterrupt
        code = 143
    if code in (130, 143):
        err_console.print("interrupted" if code == 130 else "terminated", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)
