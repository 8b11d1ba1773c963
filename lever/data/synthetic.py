"""Synthetic candidate-data files in the compatibility format, for tests and benchmarks.

`synthetic_records` builds the JSON structure as Python objects (so a test can corrupt
one field before writing it); `write_synthetic_file` writes a large file fast, as text.
Scores follow a per-query difficulty, so some groups are all-negative, some
all-positive and most mixed, like the real files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

SOURCES = ("beam", "sample_t1.0", "sample_t1.3", "random", "retrieval")
ACC_LEVELS = (0.0, 0.3, 0.6, 0.9, 1.0)


def synthetic_records(
    queries: int = 8, group: int = 6, pool: int = 10, shots: int = 2, seed: int = 0, ragged: bool = True
) -> dict[str, Any]:
    """{"_meta": ..., "<qid>": {query, candidate_pool_ids, pointer_candidates}} with distinct index sets.

    Query ids are 100, 103, 106, ... written in descending order (the reader sorts them).
    Group sizes vary in [group // 2, group] when ragged.
    """
    rng = random.Random(seed)
    out: dict[str, Any] = {"_meta": {"created_at": "synthetic", "generator": "lever.data.synthetic", "k": pool}}
    for q in reversed(range(queries)):
        qid = 100 + 3 * q
        pool_ids = rng.sample(range(10 * pool + 100), pool)
        n = rng.randint(max(1, group // 2), group) if ragged else group
        skill = rng.random()
        seen: set[frozenset[int]] = set()
        cands = []
        while len(cands) < n:
            ptr = rng.sample(range(pool), shots)
            if frozenset(ptr) in seen:
                continue
            seen.add(frozenset(ptr))
            acc = rng.choice(ACC_LEVELS) if rng.random() < skill else 0.0
            cands.append({
                "pointer": ptr,
                "pointer_global": [pool_ids[p] for p in ptr],
                "gen_method": SOURCES[len(cands) % len(SOURCES)],
                "beam_rank": len(cands),
                "temperature": None,
                "vqa_pred_answer": "answer",
                "vqa_correct": int(acc > 0),
                "vqa_acc_score": acc,
                "vqa_gt_prob": round(rng.random(), 4),
                "vqa_rel_score": round(rng.random(), 4),
                "vqa_eval_mode": "vqaEval",
                "eval_failed": False,
            })  # fmt: skip
        out[str(qid)] = {
            "query": {"query_id": qid, "question_id": qid * 10, "question": f"question {qid}?"},
            "candidate_pool_ids": pool_ids,
            "pointer_candidates": cands,
        }
    return out


def write_records(path: Path, records: dict[str, Any], indent: int | None = None) -> Path:
    """json.dump the structure (as the original tools wrote these files)."""
    Path(path).write_text(json.dumps(records, indent=indent), encoding="utf-8")
    return Path(path)


def write_synthetic_file(
    path: Path, queries: int, group: int = 40, pool: int = 64, shots: int = 2, seed: int = 0, failed: float = 0.01
) -> int:
    """Write a large file fast (text templates, numpy draws). Returns its size in bytes.

    Every group has `group` sequences drawn at random (so a few repeat a sequence, as
    duplicates do in the wild), a share `failed` of evaluations are marked failed.
    """
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"_meta": {"created_at": "synthetic", "generator": "lever.data.synthetic", "k": ' + str(pool) + "},\n")
        for start in range(0, queries, 1000):
            n = min(1000, queries - start)
            pools = np.argsort(rng.random((n, 20 * pool)), axis=1)[:, :pool]  # [n, K] distinct ids
            ptr = np.argsort(rng.random((n, group, pool)), axis=2)[:, :, :shots]  # [n, G, L] distinct
            skill = rng.random((n, 1))
            acc = np.where(rng.random((n, group)) < skill, rng.choice(ACC_LEVELS, (n, group)), 0.0)
            gt = rng.random((n, group)).round(4)
            rel = rng.random((n, group)).round(4)
            bad = rng.random((n, group)) < failed
            pool_l, ptr_l, acc_l, gt_l, rel_l, bad_l = (a.tolist() for a in (pools, ptr, acc, gt, rel, bad))
            lines = []
            for i in range(n):
                qid = start + i
                pl = pool_l[i]
                cands = []
                for g in range(group):
                    p = ptr_l[i][g]
                    a = acc_l[i][g]
                    cands.append(
                        f'{{"pointer": {p}, "pointer_global": {[pl[k] for k in p]}, "gen_method": "{SOURCES[g % 5]}", '
                        f'"beam_rank": {g}, "temperature": null, "vqa_pred_answer": "answer {g}", '
                        f'"vqa_correct": {int(a > 0)}, "vqa_acc_score": {a}, "vqa_gt_prob": {gt_l[i][g]}, '
                        f'"vqa_rel_score": {rel_l[i][g]}, "vqa_eval_mode": "{"error" if bad_l[i][g] else "vqaEval"}", '
                        f'"eval_failed": {"true" if bad_l[i][g] else "false"}}}'
                    )
                query = f'{{"query_id": {qid}, "question_id": {qid * 10}, "question": "question {qid}?"}}'
                lines.append(
                    f'"{qid}": {{"query": {query}, "candidate_pool_ids": {pl}, "pointer_candidates": [{", ".join(cands)}]}}'
                )
            f.write(",\n".join(lines))
            f.write(",\n" if start + n < queries else "\n")
        f.write("}\n")
    return Path(path).stat().st_size
