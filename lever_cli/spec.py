"""Spec commands: validate, show, diff, schema, plans."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from lever.errors import LeverError
from lever.io import write_text
from lever.spec import diff_specs, flatten, load_plan, plan_files, plan_name
from lever.spec.schema import Plan

from ._common import OverrideOpt, plan_args, workspace
from ._console import console


def validate(
    plans: list[str] = typer.Argument(..., help="Plan files or names; trailing key.path=value pairs override every plan"),
    overrides: OverrideOpt = None,
) -> None:
    """Check plan files against the schema; exit 2 on the first bad one.

    Example: [bold]lever validate plans/*.toml[/]
    """
    refs, sets = plan_args(plans, overrides)
    if not refs:
        raise LeverError("no plan given", hint="lever validate plans/*.toml")
    ws = workspace()
    for ref in refs:
        lp = load_plan(ref, sets, ws.plans_dir)
        console.print(f"[green]ok[/]  {lp.path}  [dim]{lp.hash}[/]  {lp.plan.description}", highlight=False)


def show(
    plan: list[str] = typer.Argument(..., help="A plan file or name, then optional key.path=value overrides"),
    overrides: OverrideOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the resolved spec (and the workspace) as JSON"),
) -> None:
    """Print the resolved spec (extends and overrides applied), its hash, and the workspace.

    Example: [bold]lever show plan7_1 grpo.kl.beta=0.02 --json[/]
    """
    refs, sets = plan_args(plan, overrides)
    if len(refs) != 1:
        raise LeverError(f"show takes one plan, got {len(refs)}: {' '.join(refs)}")
    from lever.eval.protocol import resolve_protocol

    ws = workspace()
    lp = load_plan(refs[0], sets, ws.plans_dir)
    protocol = resolve_protocol(lp.plan.eval).identity()  # what eval.protocol, metric and pixel settings amount to
    if as_json:
        out = {
            "name": lp.name,
            "path": str(lp.path),
            "hash": lp.hash,
            "description": lp.plan.description,
            "extends": [str(p.name) for p in lp.chain[1:]],
            "spec": lp.spec_dict(),
            "protocol": protocol,
            "workspace": ws.summary(),
        }
        console.print_json(json.dumps(out, default=str))
        return
    console.print(f"[bold]{lp.name}[/]  [dim]{lp.path}  hash {lp.hash}[/]", highlight=False)
    if lp.plan.description:
        console.print(lp.plan.description, highlight=False)
    if len(lp.chain) > 1:
        console.print("extends: " + " -> ".join(p.name for p in lp.chain), highlight=False)
    table = Table("key", "value", title="resolved spec", title_justify="left")
    for key, value in flatten(lp.spec_dict()).items():
        table.add_row(key, json.dumps(value))
    console.print(table)
    proto_table = Table("key", "value", title=f"evaluation protocol: {protocol['name']}", title_justify="left")
    for key, value in flatten(protocol).items():  # the [generation] table as generation.<key>
        if key != "name":
            proto_table.add_row(key, json.dumps(value))
    console.print(proto_table)
    ws_table = Table("key", "value", title=f"workspace: {ws.source}", title_justify="left")
    for key, value in flatten(ws.summary()).items():
        if key not in ("source",):
            ws_table.add_row(key, json.dumps(value, default=str))
    console.print(ws_table)


def diff(
    plan_a: str = typer.Argument(..., help="First plan (file or name)"),
    plan_b: str = typer.Argument(..., help="Second plan (file or name)"),
    overrides: OverrideOpt = None,
) -> None:
    """Show only the spec keys where two resolved plans differ.

    Example: [bold]lever diff plan5 plan6[/]   (the log's change: grpo.lr 5e-6 -> 5e-5)
    """
    ws = workspace()
    a = load_plan(plan_a, overrides or [], ws.plans_dir)
    b = load_plan(plan_b, overrides or [], ws.plans_dir)
    rows = diff_specs(a.spec_dict(), b.spec_dict())
    if not rows:
        console.print(f"{a.name} and {b.name} resolve to the same spec (hash {a.hash})", highlight=False)
        return
    table = Table("key", a.name, b.name, title=f"{a.name} ({a.hash}) vs {b.name} ({b.hash})", title_justify="left")
    for key, va, vb in rows:
        table.add_row(key, json.dumps(va), json.dumps(vb))
    console.print(table)


def schema(
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout"),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file"),
) -> None:
    """Print the plan JSON Schema, for editors that check TOML files (e.g. Taplo, Even Better TOML).

    Example: [bold]lever schema -o plan.schema.json[/]
    """
    text = json.dumps(Plan.model_json_schema(), indent=2)
    if out:
        if out.exists() and not force:
            raise LeverError(f"{out} exists; not overwriting it", hint="add --force to replace it")
        write_text(out, text + "\n")
        console.print(f"wrote {out}")
    else:
        print(text)


def plans() -> None:
    """List every plan in the workspace's plans/ folder with its one-line description.

    Example: [bold]lever plans[/]
    """
    ws = workspace()
    files = plan_files(ws.plans_dir)
    if not files:
        raise LeverError(f"no plans in {ws.plans_dir}/")
    table = Table("plan", "extends", "hash", "description")
    for path in files:
        lp = load_plan(path, (), ws.plans_dir)
        parent = plan_name(lp.chain[1], ws.plans_dir) if len(lp.chain) > 1 else ""
        table.add_row(lp.name, parent, lp.hash, lp.plan.description)
    console.print(table)


def register(app: typer.Typer) -> None:
    for fn in (validate, show, diff, schema, plans):
        app.command(fn.__name__)(fn)
