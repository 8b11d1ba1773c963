"""Every `--help` text renders what it says: rich markup eats an unescaped `[word]` (`pip install 'lever[plot]'`
would print `pip install 'lever'`), so a help text escapes its brackets as `\\[`."""

from __future__ import annotations

import re

import typer
from rich.text import Text

from lever_cli.app import app

STYLES = re.compile(r"\[(bold|/)\]")  # the markup help texts use on purpose


def _texts(cmd, path):
    yield path, cmd.help or ""
    for p in cmd.params:
        yield f"{path} {p.name}", getattr(p, "help", None) or ""
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _texts(sub, f"{path} {name}")


def test_no_help_text_loses_a_bracket_to_markup():
    lost = []
    for where, text in _texts(typer.main.get_command(app), "lever"):
        want = STYLES.sub("", text).replace("\\[", "[")
        if Text.from_markup(text).plain != want:
            lost.append(where)
    assert lost == []
