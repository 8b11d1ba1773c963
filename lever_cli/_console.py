"""Shared rich consoles: results on stdout, messages and progress on stderr.

On a terminal they wrap at its width. Elsewhere (output redirected to a file, a pipe, a batch job's log) rich would
wrap every line and table at 80 columns; these consoles do not wrap there, unless `COLUMNS` sets a width.
"""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions

UNWRAPPED = 100_000  # the width of a console that is not a terminal: lines and tables keep their natural width


class _Console(Console):
    """A rich Console that does not wrap when its output is not a terminal and `COLUMNS` is unset."""

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size; when not a terminal (and no width was given), one line is as wide as it needs."""
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal and not self._environ.get("COLUMNS", "").isdigit():
            return ConsoleDimensions(UNWRAPPED, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        """Fix the size, as rich's Console allows."""
        Console.size.fset(self, new_size)


console = _Console()
err_console = _Console(stderr=True)


def fit_width(c: Console | None = None, wide: bool = False) -> int | None:
    """The width a table must fit: the terminal's, or COLUMNS'; None (as wide as it is, one record a line) for output to
    a file or pipe without COLUMNS, or with `--wide`."""
    c = c or console
    if wide:
        return None
    if c.is_terminal:
        return c.width
    columns = os.environ.get("COLUMNS", "")  # read now: rich reads it once, when the console is made
    return int(columns) if columns.isdigit() else None
