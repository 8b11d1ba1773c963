"""The one error type users see: a short message, no traceback, exit code 2 for bad input."""

from __future__ import annotations


class LeverError(Exception):
    """A problem with the user's input (plan, workspace, data file) or environment.

    The CLI prints ``str(err)`` on one screen and exits with ``exit_code``
    (2 = bad spec or data file, 1 = a run that failed).
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        msg = self.args[0]
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class RunFailed(LeverError):
    """A run stopped by a guardrail (NaN loss, KL above the plan's limit)."""

    exit_code = 1


class DamagedState(LeverError):
    """A file lever wrote earlier is cut short, edited or missing: the message names it, the hint the repair."""


class BudgetSpent(LeverError):
    """Training reached its budget of new VLM calls (`lever run --max-vlm-calls`): a clean stop, not a failure.
    The run is marked interrupted (resumable); the CLI exits 75 (EX_TEMPFAIL: "try again later")."""

    exit_code = 75

    def __init__(self, spent: int, limit: int):
        super().__init__(f"stopped at the VLM call budget: {spent:,} new VLM calls made, the budget is {limit:,}")
        self.where = ""  # the stage (and epoch) it stopped in, told by the layer that knows it

    def __str__(self) -> str:
        return f"{self.args[0]} ({self.where})" if self.where else self.args[0]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a scheduler's time limit): handled like Ctrl-C, so a running run is marked interrupted;
    the CLI then exits 143 (128 + SIGTERM) instead of 130."""
