"""Throughput of `lever data generate`: scored sequences per second, and lever's own share of the time.

Two backends, same run: the bundled benchmark's simulated VLM (`sim`), and the tiny random
Qwen2.5-VL of the tests on an OK-VQA-format fixture (`tiny`, CPU). Each is run with one process
and with 2 gloo ranks (torchrun). "lever overhead" is the time outside the backend's calls
(proposals, scoring, shards, merge) per scored sequence, as a share of the backend's time per
sequence. Target: under 5% of the tiny model's call.

    python benchmarks/bench_generate.py [--queries 24] [--sim-queries 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


class Timed:
    """A backend that adds up the seconds spent in the wrapped backend's calls."""

    def __init__(self, inner):
        self.inner, self.name, self.seconds = inner, inner.name, 0.0

    def _time(self, fn, requests):
        t = time.perf_counter()
        try:
            return fn(requests)
        finally:
            self.seconds += time.perf_counter() - t

    def answer(self, requests):
        return self._time(self.inner.answer, requests)

    def gt_probs(self, requests):
        return self._time(self.inner.gt_probs, requests)


def worker(kind: str, root: Path, out: Path) -> None:
    """One generation (this process is one rank when started by torchrun); rank 0 prints its timings as JSON."""
    from lever.data.sources import resolve_dataset
    from lever.eval.distributed import ranks
    from lever.eval.generate import GenerateOptions, generate_file, make_backend
    from lever.spec import load_workspace

    ws = resolve_dataset(load_workspace(root / "lever.toml"))
    if kind == "sim":
        backend = Timed(make_backend(ws, None, "cpu", log=lambda m: None))
    else:
        from tiny_models import tiny_qwen

        from lever.eval.hf import HFBackend

        backend = Timed(HFBackend.from_pretrained_objects(*tiny_qwen(), "cpu", 8, 3, 1))
    feats = torch.load(root / "f.pt", weights_only=True)
    t = time.perf_counter()
    res = generate_file(ws, root / "p.json", feats, out, opts=GenerateOptions(), backend=backend, redo=True, log=lambda m: None)
    wall = time.perf_counter() - t
    if ranks().is_main:
        print(json.dumps({"wall": wall, "backend": backend.seconds, "sequences": res["sequences"]}))


def setup(kind: str, root: Path, queries: int) -> None:
    """Workspace, features and pools for one backend."""
    from lever.data.sources import resolve_dataset
    from lever.eval.prepare import embed_split, make_pools, write_pools
    from lever.spec import load_workspace

    if kind == "sim":
        (root / "lever.toml").write_text(
            f'cache = "{ROOT / ".lever-cache" / "tests"}"\n[bench]\nn_train = 600\nn_queries = 120\nn_val = 80\n'
        )
        embed_split(resolve_dataset(load_workspace(root / "lever.toml")), "train", root / "f.pt", log=lambda m: None)
    else:
        from tiny_models import write_okvqa_workspace

        write_okvqa_workspace(root, n_train=max(40, queries + 8), n_val=2, pool=8)
        (root / "f.pt").write_bytes((root / "query_embeddings.pt").read_bytes())
    write_pools(root / "p.json", make_pools(torch.load(root / "f.pt"), k=16, queries=queries))


def run(kind: str, root: Path, nproc: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc)), "GLOO_SOCKET_IFNAME": "lo"}
    me = [str(Path(__file__).resolve()), "--worker", kind, "--root", str(root), "--out", str(root / f"out-{nproc}.json")]
    cmd = (
        [sys.executable, *me]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *me]
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=24, help="queries for the tiny model")
    ap.add_argument("--sim-queries", type=int, default=400, help="queries for the sim backend")
    ap.add_argument("--worker", choices=("sim", "tiny"), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.root, args.out)
        return
    print(f"{'backend':8} {'procs':>5} {'sequences':>9} {'seq/s':>8} {'backend ms/seq':>14} {'lever ms/seq':>12} {'overhead':>8}")
    for kind, n in (("sim", args.sim_queries), ("tiny", args.queries)):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            setup(kind, root, n)
            outs = {}
            for nproc in (1, 2):
                r = run(kind, root, nproc)
                outs[nproc] = (root / f"out-{nproc}.json").read_bytes()
                seqs = r["sequences"]
                per_rank = seqs / nproc  # rank 0's share: its backend seconds are for about this many sequences
                b_ms = 1000 * r["backend"] / per_rank
                l_ms = 1000 * (r["wall"] - r["backend"]) / per_rank
                print(f"{kind:8} {nproc:>5} {seqs:>9} {seqs / r['wall']:>8.1f} {b_ms:>14.3f} {l_ms:>12.3f} {l_ms / b_ms:>8.1%}")
            print(f"{'':8} 2 ranks' merged file equals 1 process's: {outs[1] == outs[2]}")


if __name__ == "__main__":
    main()
