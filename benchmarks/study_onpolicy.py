"""The on-policy study's training figures per plan (docs/training.md, The on-policy study): VLM prompts and calls,
and the selected GRPO epoch's signal (the shares of trained groups with all-zero and with all-flat (|A| < 0.01)
advantages, after the top-k; the online rollouts' share of sampled groups with equal rewards, before it, and their
sampling entropy per pick; the KL to the reference), means over seeds, and the validation queries' reward of the
greedy selection (`val/reward`) at the RCE stage's selected epoch (where GRPO starts) and at the plan's.

    python benchmarks/study_onpolicy.py [--workspace lever.toml] [PLAN...]

Default plans: every plans/onpolicy/ plan but the baseline, from the workspace's runs. "prompts" are the prompts
scored for training (the rollouts, the refresh rounds' data and the val/reward validation), "calls" those the VLM
answered (the rest came from the reward cache, so calls depend on what ran before on the workspace).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANS = ["plan5", "plan5_reward", "refresh1", "refresh1_reward", "refresh3", "refresh3_reward",
         "online8", "online8_reward", "online16", "online16_reward", "online8_all", "online8_all_reward"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plans", nargs="*", default=[f"onpolicy/{p}" for p in PLANS])
    ap.add_argument("--workspace", default=None)
    args = ap.parse_args()

    from lever.io import read_jsonl
    from lever.recipe import Recipe
    from lever.spec import load_plan, load_workspace

    ws = load_workspace(args.workspace)
    print(
        "| plan | selected (per seed) | prompts | VLM calls | zero-adv share | flat-group share | rollout zero-std share "
        "| entropy | KL | val/reward RCE | val/reward selected |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.plans:
        lp = load_plan(name, (), ws.plans_dir)
        keys = ("adv/zero_frac", "adv/flat_frac", "rollout/zero_std_frac", "rollout/entropy", "kl/value", "val/reward")
        picks: list[str] = []
        prompts = calls = 0.0
        diag: dict[str, list[float]] = {k: [] for k in keys}
        start: list[float] = []  # val/reward at the RCE stage's selected epoch
        for seed in lp.plan.seeds:
            run = Recipe.build(lp, ws, seed, lambda m: None).run
            sel = json.loads((run.path / "selected.json").read_text())
            picks.append(f"{sel['stage']} {sel['epoch']}")
            for entry in json.loads((run.path / "stages.json").read_text()):
                folder = ws.runs_dir / entry["dir"]
                for row in read_jsonl(folder / "metrics.jsonl"):
                    if entry["stage"] == "rce" and row["epoch"] == entry["epoch"] and "val/reward" in row:
                        start.append(row["val/reward"])
                    for part in ("rollout", "val"):
                        prompts += row.get(f"cost/{part}/calls", 0.0) + row.get(f"cost/{part}/hits", 0.0)
                        calls += row.get(f"cost/{part}/calls", 0.0)
                    if entry["stage"] == sel["stage"] and row["epoch"] == sel["epoch"]:
                        for k in diag:
                            if k in row:
                                diag[k].append(row[k])
                refresh = folder / "data" / "refresh.json"
                if refresh.is_file():
                    r = json.loads(refresh.read_text())
                    prompts += r["vlm/calls"] + r["vlm/hits"]
                    calls += r["vlm/calls"]

        n = len(lp.plan.seeds)
        print(
            f"| {name} | {', '.join(picks)} | {prompts / n:,.0f} | {calls / n:,.0f} | "
            + " | ".join(_mean(diag[k]) for k in keys[:-1])
            + f" | {_mean(start)} | {_mean(diag['val/reward'])} |"
        )
    print("\n_prompts and VLM calls: per seed (mean); the signal columns: the selected epoch's, mean over seeds._")


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3g}" if values else "—"


if __name__ == "__main__":
    main()
