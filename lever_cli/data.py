"""Data commands: `lever data stats / balance / embed / pools / generate`. Parse, call lever, render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from lever.errors import LeverError
from lever.io import stat_input
from lever.spec import load_plan
from lever.spec.load import format_validation_error
from lever.spec.schema import RewardSpec
from lever.spec.workspace import DEFAULT_DATASET

from ._common import OverrideOpt, workspace

if TYPE_CHECKING:
    from lever.data.sources import Dataset
from ._console import console, err_console

data_app = typer.Typer(
    help="Make candidate data from raw VQA files (embed, pools, generate), inspect and balance it (docs/data.md).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _log(msg: str) -> None:
    err_console.print(msg, highlight=False, soft_wrap=True)


def _cache_dir(use: bool) -> Path | None:
    return workspace().cache_dir / "candidates" if use else None


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, title=title, title_justify="left")


# --------------------------------------------------------------------------- stats


def _candidates_file(ref: str) -> Path:
    """A path as given, else a candidate-data name looked up in the workspace (generating the benchmark if needed)."""
    if stat_input(Path(ref), "candidate-data file") is not None or Path(ref).suffix == ".json":
        return Path(ref)
    from lever.data.sources import resolve_dataset, resolve_train_sources

    return resolve_train_sources(resolve_dataset(workspace()), ref, "main", _log).candidates


@data_app.command("stats")
def stats(
    file: str = typer.Argument(..., help="Candidate-data JSON file, or a candidate-data name of the workspace (e.g. main)"),
    plan: str | None = typer.Option(
        None, "--plan", "-p", help="Also predict what this plan's reward and advantage settings make of the data"
    ),
    overrides: OverrideOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of tables"),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Use (and fill) the parsed-data cache in the workspace cache folder"
    ),
) -> None:
    """Queries, sequences, group sizes, outcomes, tiers and reward gaps of a candidate-data file.

    With --plan, also the plan's filtered training groups and their advantages, computed
    exactly as GRPO will, with a warning when most groups carry almost no signal.

    Example: [bold]lever data stats rl_data_k64_v3.json --plan plan5[/]   or, on the bundled benchmark,
    [bold]lever data stats main --plan plan5 -s grpo.advantage.kind=rank[/] (what rank advantages would give)
    """
    if overrides and not plan:
        raise LeverError("--set overrides need --plan", hint="lever data stats main --plan plan5 -s grpo.advantage.kind=rank")
    lp = load_plan(plan, overrides or (), workspace().plans_dir) if plan else None  # a bad plan fails before the read
    from lever.data.reader import load_candidates
    from lever.data.stats import data_stats
    from lever.train.predict import plan_prediction

    keep = "keep" if lp and lp.plan.data.duplicates == "keep" else "drop"  # the plan's reading of repeated sequences
    data = load_candidates(_candidates_file(file), cache_dir=_cache_dir(cache), log=_log, duplicates=keep)
    reward = lp.plan.reward if lp else RewardSpec()
    rules = lp.plan.data.tier_rules if lp else None
    out = data_stats(data, reward.model_copy(update={"normalize": "none"}), rules)
    if lp:
        out["plan"] = {"name": lp.name, "path": str(lp.path), **plan_prediction(data, lp.plan)}
    if as_json:
        typer.echo(json.dumps(out))
        return
    _render_stats(out)


def _render_stats(s: dict[str, Any]) -> None:
    read = s["read"]
    t = _table(f"{s['file']}", "", "")
    t.add_row("queries", str(s["queries"]))
    t.add_row("sequences", str(s["sequences"]))
    t.add_row("shots per sequence", str(s["shots"]))
    t.add_row("pool size", f"{s['pool_size']['min']}..{s['pool_size']['max']}")
    t.add_row("read: candidates in file", str(read.get("candidates", "?")))
    t.add_row("read: duplicates dropped", str(read.get("duplicates_dropped", 0)))
    t.add_row("read: failed evaluations (kept, flagged)", str(s["failed"]["sequences"]))
    t.add_row("queries whose every evaluation failed", str(s["failed"]["queries_all_failed"]))
    for field in ("missing_gt_prob", "missing_rel_score"):
        if read.get(field):
            t.add_row(f"read: {field.replace('_', ' ')}", str(read[field]))
    console.print(t)

    g = s["group_size"]
    t = _table(
        f"group sizes (min {g['min']}, mean {g['mean']:.1f}, median {g['median']:g}, max {g['max']})", "size", "queries", ""
    )
    for label, n in _bins(g["histogram"]):
        t.add_row(label, str(n), _bar(n, s["queries"]))
    console.print(t)

    o = s["outcomes"]
    t = _table(f"outcomes (mean positive ratio {s['positive_ratio']['mean']:.3f})", "positive ratio", "queries", "")
    for b in s["positive_ratio"]["bins"]:
        t.add_row(b["range"], str(b["queries"]), _bar(b["queries"], s["queries"]))
    t.add_row("mixed", str(o["mixed"]), _bar(o["mixed"], s["queries"]))
    console.print(t)

    r, gap = s["reward"], s["reward_gap"]
    t = _table(
        f"rewards ({r['mode']}) and reward gap per group (max - min)", "", "min", "p10", "p25", "median", "p75", "p90", "max"
    )
    t.add_row("gap", *(_fmt(gap[k]) for k in ("p0", "p10", "p25", "p50", "p75", "p90", "p100")))
    console.print(t)
    console.print(
        f"reward: mean {r['mean']:.4g}, std {r['std']:.4g}, min {r['min']:.4g}, max {r['max']:.4g}; "
        f"groups with one reward value (no signal): {gap['uniform_groups']}",
        highlight=False,
    )
    rules = s["tier_rules"]
    t = _table(
        f"quality tiers (high: gap >= {rules['high_gap']:g}, >= {rules['high_min_pos']} pos, >= {rules['high_min_neg']} neg; "
        f"medium: gap >= {rules['medium_gap']:g}, >= {rules['medium_min_pos']} pos, >= {rules['medium_min_neg']} neg)",
        "tier", "queries", "",
    )  # fmt: skip
    for name, n in s["tiers"].items():
        t.add_row(name, str(n), _bar(n, s["queries"]))
    console.print(t)
    t = _table("sources (gen_method)", "source", "sequences", "with behaviour log-prob")
    for name, n in s["sources"].items():
        t.add_row(name, str(n), str(s["behaviour_logps"].get(name, 0)))
    console.print(t)
    if "plan" in s:
        _render_plan(s["plan"])


def _render_plan(p: dict[str, Any]) -> None:
    adv = p["advantage"]
    rw = p["plan_reward"]
    scale = adv.get("scale_rewards")  # in the spec dump only when not "group", the default (zscore only)
    floor = f"std floor {adv['std_floor']:g}, " if adv["kind"] == "zscore" and scale != "none" else ""
    scaling = {None: "", "batch": "scale_rewards batch, ", "none": "scale_rewards none: r - mean, "}[scale] + floor
    console.print(
        f"\n[bold]plan {p['name']}[/]: reward {rw['mode']} (h {rw['hard_weight']:g}, s {rw['soft_weight']:g}, "
        f"rel {rw['rel_weight']:g}, clip {rw['clip']}, normalize {rw['normalize']}); advantage {adv['kind']} "
        f"({scaling}clip {adv['clip']:g}); split {p['split']['train']} train / {p['split']['val']} val",
        highlight=False,
    )
    if not p["has_grpo"]:
        console.print("[dim]the plan has no GRPO stage: advantages below are what GRPO would see[/]")
    f = p["filter"]
    t = _table("plan data filter (then the train/val split)", "step", "queries dropped", "sequences dropped")
    t.add_row("(start)", str(f["queries_in"]), str(f["sequences_in"]))
    for row in f["steps"]:
        t.add_row(row["step"], str(row["queries"]), str(row["sequences"]))
    t.add_row("[bold]kept[/]", str(f["queries_out"]), str(f["sequences_out"]))
    console.print(t)
    for st in p["stages"]:
        if st["filter"]:
            t = _table(
                f"stage {st['stage']}: its own filter on the training split", "step", "queries dropped", "sequences dropped"
            )
            for row in st["filter"]["steps"]:
                t.add_row(row["step"], str(row["queries"]), str(row["sequences"]))
            console.print(t)
        t = _table(
            f"stage {st['stage']}: {st['queries']} training groups, {st['sequences']} sequences; "
            f"reward mean {st['reward']['mean']:.4g}, std {st['reward']['std']:.4g}",
            "sequences", "groups", "all zero", "max |A| < 0.01", "adv std", "adv max", "mean max |A|",
        )  # fmt: skip
        for a in st["advantages"]:
            t.add_row(
                "all" if a["top_k"] is None else f"top-{a['top_k']}", str(a["groups"]), f"{a['zero_share']:.1%}",
                f"{a['flat_share']:.1%}", f"{a['adv_std']:.4g}", f"{a['adv_max']:.4g}", f"{a['mean_spread']:.4g}",
            )  # fmt: skip
        console.print(t)
    for w in p["warnings"]:
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False)


def _bins(hist: dict[str, int], most: int = 12) -> list[tuple[str, int]]:
    """Exact sizes when there are few, else about `most` equal-width bins."""
    items = sorted((int(k), v) for k, v in hist.items())
    if len(items) <= most:
        return [(str(k), v) for k, v in items]
    lo, hi = items[0][0], items[-1][0]
    width = -(-(hi - lo + 1) // most)
    out: dict[int, int] = {}
    for k, v in items:
        b = lo + (k - lo) // width * width
        out[b] = out.get(b, 0) + v
    return [(f"{b}-{min(b + width - 1, hi)}", v) for b, v in sorted(out.items())]


def _bar(n: int, total: int, width: int = 30) -> str:
    return "█" * round(width * n / total) if total else ""


# --------------------------------------------------------------------------- balance


def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise LeverError(f"--positive-ratio {text!r}: expected lo,hi", hint="e.g. --positive-ratio 0.1,0.9") from None
    return lo, hi


@data_app.command("balance")
def balance(
    src: Path = typer.Argument(..., metavar="IN", help="Candidate-data JSON file to read (never modified)"),
    out: Path = typer.Argument(..., metavar="OUT", help="File to write (refused if it exists, unless --force)"),
    drop_uniform: bool = typer.Option(True, "--drop-uniform/--keep-uniform", help="Drop groups whose rewards are all equal"),
    drop_failed: bool = typer.Option(True, "--drop-failed/--keep-failed", help="Drop failed evaluations"),
    positive_ratio: str = typer.Option(
        "0,1", "--positive-ratio", help="Keep groups whose share of correct sequences is in lo,hi"
    ),
    group_size: int | None = typer.Option(
        None, "--group-size", help="Drop groups smaller than N, sub-sample larger ones to N (stratified by outcome)"
    ),
    pool_size: int | None = typer.Option(
        None, "--pool-size", help="Restrict candidate pools to K items (used items first), remapping pointers"
    ),
    tiers: str | None = typer.Option(None, "--tiers", help="Keep only these quality tiers, e.g. high,medium"),
    positive_share: float | None = typer.Option(
        None,
        "--positive-share",
        help="Sub-sample each group towards this share of correct sequences (0 < s < 1), e.g. 0.5; one-outcome groups are dropped",
    ),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        help="A named recipe of the original: balanced-v3 = keep queries with 40 to 60 percent correct sequences (docs/datasets.md)",
    ),
    reward_mode: str = typer.Option(
        "hard_plus_soft",
        "--reward-mode",
        help="Reward used for uniformity and tiers: hard_plus_soft, separated, hard_plus_gtprob_plus_rel, hard_only, soft_only",
    ),
    hard_weight: float = typer.Option(1.0, "--hard-weight", help="h of the reward"),
    soft_weight: float = typer.Option(1.0, "--soft-weight", help="s of the reward"),
    rel_weight: float = typer.Option(0.1, "--rel-weight", help="rel of the reward (hard_plus_gtprob_plus_rel)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the sub-sampling"),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use (and fill) the parsed-data cache"),
    as_json: bool = typer.Option(False, "--json", help="Print the before/after report as one JSON object"),
) -> None:
    """Write a balanced copy of a candidate-data file: same format, fewer uninformative groups.

    Steps, in order: drop failed evaluations, restrict pools, fix group sizes, a target positive
    share, keep tiers, keep a positive-ratio band, drop uniform-reward groups. OUT gets a
    _meta.balance record and is written atomically.

    Example: [bold]lever data balance rl_data_k64_v3.json rl_data_k64_v3_balanced.json --positive-ratio 0.1,0.9 --group-size 16[/]
    or the original's Balanced V3: [bold]lever data balance rl_data_vqav2.json rl_data_balanced_v3.json --recipe balanced-v3[/]
    """
    from lever.data.balance import BalanceOptions, balance_file

    try:
        reward = RewardSpec(mode=reward_mode, hard_weight=hard_weight, soft_weight=soft_weight, rel_weight=rel_weight)
    except ValidationError as err:
        raise format_validation_error(err, "reward options", RewardSpec) from None
    chosen = dict(
        drop_failed=drop_failed, drop_uniform=drop_uniform, positive_ratio=_band(positive_ratio),
        group_size=group_size, pool_size=pool_size,
        tiers=tuple(t.strip() for t in tiers.split(",") if t.strip()) if tiers is not None else None,
        reward=reward, seed=seed, positive_share=positive_share,
    )  # fmt: skip
    if recipe is None:
        opts = BalanceOptions(**chosen)
    else:
        if positive_ratio != "0,1":
            raise LeverError(f"--recipe {recipe} sets the positive-ratio band itself", hint="drop --positive-ratio")
        chosen.pop("positive_ratio")
        opts = BalanceOptions.from_recipe(recipe, **chosen)
    result = balance_file(src, out, opts, force=force, cache_dir=_cache_dir(cache), log=_log)
    if as_json:
        typer.echo(json.dumps(result))
        return
    t = _table("steps", "step", "queries dropped", "sequences dropped", "")
    for row in result["steps"]:
        extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row.items() if k not in ("step", "queries", "sequences"))
        t.add_row(row["step"], str(row["queries"]), str(row["sequences"]), extra)
    console.print(t)
    before, after = result["before"], result["after"]
    t = _table("before / after", "", "before", "after")
    for key in before:
        t.add_row(key.replace("_", " "), _fmt(before[key]), _fmt(after.get(key, "")))
    console.print(t)
    console.print(f"wrote {result['out']}", highlight=False)


# --------------------------------------------------------------------------- embed, pools, generate


DatasetOpt = typer.Option(
    DEFAULT_DATASET,
    "--dataset",
    "-d",
    help="The workspace's dataset: okvqa (its okvqa, candidates and features tables) or NAME of a datasets.NAME table "
    "(docs/datasets.md)",
)


def _dataset(name: str) -> Dataset:
    """The workspace's dataset of --dataset, resolved once per command."""
    from lever.data.sources import resolve_dataset

    return resolve_dataset(workspace(), name)


def _default_features(out: Path | None, ds: Dataset, reading: bool = False) -> Path:
    """OUT as given, else the `main` features file of the dataset. `reading`: the file is an input (`data pools`,
    `data generate`: --features), not what `data embed` writes (--out)."""
    if out is not None:
        return out
    if "main" in ds.features:
        return ds.ws.path(ds.features["main"])
    table = "[features]" if ds.is_default else f"[{ds.table}] features"
    if reading:
        raise LeverError(
            f'no features file: pass --features FILE, or name one in the workspace as {table} main = "..."',
            hint="`lever data embed --out features.pt` writes one (on the bundled benchmark, its simulated features)",
        )
    raise LeverError(
        f'no output file: pass --out FILE, or name one in the workspace as {table} main = "..."',
        hint="lever data embed --out features.pt",
    )


def _embed_target(split: str, out: Path | None, ds: Dataset) -> Path:
    """Where `data embed` writes: --out, else the dataset's features.main for train and its `.val` sibling for
    val; the training features are never the target of another split."""
    if split not in ("train", "val"):
        raise LeverError(f"--split {split!r} is not known", hint="use train or val")
    main = ds.ws.path(ds.features["main"]) if "main" in ds.features else None
    if split == "train":
        return _default_features(out, ds)
    if out is None:
        if main is None:
            raise LeverError("no output file: pass --out FILE", hint="lever data embed --split val --out val_features.pt")
        return main.with_name(f"{main.stem}.val{main.suffix}")
    if main is not None and out.resolve() == main.resolve():
        raise LeverError(
            f"--out {out} is the workspace's training features (features.main): the val split's features would replace them",
            hint=f"write them elsewhere, e.g. --out {main.with_name(f'{main.stem}.val{main.suffix}')}",
        )
    return out


@data_app.command("embed")
def embed(
    split: str = typer.Option("train", "--split", help="train (the features file training reads) or val"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Features file to write (default: features.main for train, NAME.val.pt beside it for val)"
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Items per CLIP forward pass"),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when there is one), cpu, cuda, cuda:N"),
    dataset: str = DatasetOpt,
) -> None:
    """CLIP features of a split: one float tensor [N, d], row i = item i (sorted question id).

    emb = normalise(mean(normalise(image), normalise(question))) with the workspace's models.clip.
    Chunks are cached by the model's and the items' files: a killed run resumes, a second run only copies.
    On the bundled benchmark (no images) the simulated world's features are written. --split val writes
    beside the training features (features.main query_embeddings.pt -> query_embeddings.val.pt), never over them.

    Example: [bold]lever -w lever.toml data embed --out cache/query_embeddings.pt[/]   or, for a
    datasets.vqav2 table, [bold]lever data embed --dataset vqav2[/] (writes its features.main)
    """
    from lever.eval.prepare import embed_split

    from ._progress import CountProgress

    ds = _dataset(dataset)
    target = _embed_target(split, out, ds)
    with CountProgress(err_console, f"embedding {split}", unit="items") as bar:
        result = embed_split(ds, split, target, batch_size=batch_size, device=device, progress=bar.update, log=_log)
    console.print(f"wrote {result['out']}: [{result['rows']}, {result['dim']}]", highlight=False)


@data_app.command("pools")
def pools(
    out: Path | None = typer.Argument(None, metavar="OUT", help="Pools file to write (the original's sampler-cache JSON)"),
    features: Path | None = typer.Option(None, "--features", "-f", help="Features file (default: the workspace's features.main)"),
    k: int = typer.Option(64, "--k", help="Items per pool"),
    queries: int = typer.Option(800, "--queries", "-n", help="Training queries (drawn at random, seeded; 0 = every item)"),
    method: str = typer.Option("similar", "--method", help="similar (the K nearest by cosine) or random"),
    seed: int = typer.Option(0, "--seed", help="Seed of the query draw and of random pools"),
    check: Path | None = typer.Option(None, "--check", help="Only check an existing pools file (lever's or the original's)"),
    dataset: str = DatasetOpt,
) -> None:
    """For every training query a pool of K train items, never the query itself: {query row: [K rows]}.

    The file is the original's sampler-cache format, so either project reads the other's.

    Example: [bold]lever data pools pools_k64.json --k 64 --queries 800[/]   or   [bold]lever data pools --check sampler_cache.json[/]
    """
    from lever.data.sources import load_features
    from lever.eval.prepare import make_pools, read_pools, write_pools

    feats = load_features(_default_features(features, _dataset(dataset), reading=True))
    if check is not None:
        got = read_pools(check, feats.shape[0])
        console.print(f"{check}: {len(got)} pools of {len(next(iter(got.values())))} items, valid", highlight=False)
        return
    if out is None:
        raise LeverError("no output file given", hint="lever data pools pools_k64.json --k 64")
    if out.exists():
        raise LeverError(f"{out} already exists", hint="remove it or write another file")
    made = make_pools(feats, k=k, queries=queries or None, method=method, seed=seed)
    write_pools(out, made)
    console.print(f"wrote {out}: {len(made)} pools of {k} items ({method})", highlight=False)


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise LeverError(f"{what} {text!r}: expected numbers separated by commas", hint=f"e.g. {what} 1.0,1.3") from None


@data_app.command("generate")
def generate(
    pools_file: Path = typer.Argument(
        ..., metavar="POOLS", help="Pools file (`lever data pools`, or the original's sampler cache)"
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="Candidate-data file to write (compatibility format)"),
    features: Path | None = typer.Option(None, "--features", "-f", help="Features file (default: the workspace's features.main)"),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="Plan whose selected checkpoint proposes beams and samples; plan5@HASH names a run made with overrides "
        "(default: similarity)",
    ),
    plan: str | None = typer.Option(None, "--plan", "-p", help="Plan whose eval settings (protocol, metric, generation) score"),
    overrides: OverrideOpt = None,
    shots: int = typer.Option(2, "--shots", help="Demonstrations per sequence"),
    beams: int = typer.Option(5, "--beams", help="Beam-search sequences per query"),
    temperatures: str = typer.Option("1.0,1.3", "--temperatures", help="Sampling temperatures"),
    samples: int = typer.Option(2, "--samples", help="Samples per temperature"),
    random: int = typer.Option(2, "--random", help="Uniform random sequences per query"),
    retrieval: int = typer.Option(3, "--retrieval", help="Similarity-retrieval sequences per query"),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and random sequences"),
    dedupe: str = typer.Option(
        "set",
        "--dedupe",
        help="set: one sequence per set of items, from the first source of beam > retrieval > sample > random (the "
        "original's); ordered: each ordered sequence once, \\[a, b] and \\[b, a] both kept",
    ),  # fmt: skip
    device: str = typer.Option("auto", "--device", help="Device of the VLM (under torchrun: one GPU per rank)"),
    redo: bool = typer.Option(False, "--redo", help="Start again: overwrite OUT and drop an interrupted generation"),
    dataset: str = DatasetOpt,
) -> None:
    """Candidate sequences for every query of a pools file, answered and scored by the evaluation backend.

    Written as it goes to OUT.parts/ (a killed run resumes where it stopped), then merged into OUT.
    Spread over GPUs with [bold]torchrun --nproc_per_node N -m lever_cli data generate ...[/].

    Example: [bold]lever data generate pools_k64.json rl_data_k64.json --policy plan_sft[/]
    """
    from lever.data.sources import load_features
    from lever.eval.distributed import ranks
    from lever.eval.generate import GenerateOptions, Sources, generate_file
    from lever.spec.schema import EvalSpec

    from ._progress import CountProgress

    ws = workspace()
    if dedupe not in ("set", "ordered"):
        raise LeverError(f"--dedupe {dedupe!r} is not known", hint="use set (the original's) or ordered")
    if overrides and not plan:
        raise LeverError("--set overrides need --plan", hint="lever data generate POOLS OUT --plan baseline -s eval.num_beams=1")
    spec = load_plan(plan, overrides or (), ws.plans_dir).plan.eval if plan else EvalSpec()
    ds = _dataset(dataset)
    feats = load_features(_default_features(features, ds, reading=True))
    selector = ("similarity", None)
    if policy:
        from lever.recipe import Recipe, selected_model
        from lever.runs.store import load_run_plan

        lp = load_run_plan(policy, ws.runs_dir, ws.plans_dir)  # plan5@HASH: the run made with overrides

        seed0 = lp.plan.seeds[0]
        entry, model, digest = selected_model(Recipe.build(lp, ws, seed0, _log), dim=feats.shape[1])
        # the weights' digest in the label: a retrained plan is another policy (no mixed resume)
        selector = (f"{lp.name} seed {seed0} {entry.stage} epoch {entry.epoch} weights {digest}", model)
    src = Sources(beams, _floats(temperatures, "--temperatures"), samples, random, retrieval)
    opts = GenerateOptions(shots=shots, sources=src, seed=seed, dedupe=dedupe)
    with CountProgress(err_console, "generating", unit="queries", enabled=ranks().is_main) as bar:
        result = generate_file(
            ds, pools_file, feats, out, opts=opts, spec=spec, policy=selector, device=device, redo=redo,
            progress=bar.update, log=_log,
        )  # fmt: skip
    if ranks().is_main:
        calls = f" (VLM calls {result['vlm_calls']}, cache hits {result['cache_hits']})" if "vlm_calls" in result else ""
        console.print(
            f"wrote {result['out']}: {result['queries']} queries, {result['sequences']} sequences{calls}", highlight=False
        )
