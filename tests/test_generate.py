"""From raw files to candidate data with lever alone: `data embed`, `data pools`, `data generate` (sim backend)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from workspaces import bench_workspace  # noqa: E402

from lever.data.sources import resolve_dataset
from lever.errors import LeverError
from lever.eval.generate import GenerateOptions, Sources, generate_file, propose, similarity_policy
from lever.eval.prepare import make_pools, read_pools
from lever.eval.vqa import relevance
from lever.spec import load_workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A small bundled benchmark (cache shared with the other tests) and its features file."""
    monkeypatch.chdir(ROOT)
    return bench_workspace(tmp_path)


def cli(lever, ws, *args):
    res = lever("--workspace", ws, *args)
    assert res.code == 0, res.text
    return res


def test_relevance_fields():
    assert relevance("", ["a"]) == {"vqa_rel_token_f1": 0.0, "vqa_rel_edit_sim": 0.0, "vqa_rel_score": 0.0}
    r = relevance("Red car", ["red", "blue"])
    assert r["vqa_rel_token_f1"] == pytest.approx(2 / 3, abs=1e-4) and r["vqa_rel_score"] == max(
        r["vqa_rel_token_f1"], r["vqa_rel_edit_sim"]
    )
    assert relevance("sheep", ["sheep"])["vqa_rel_score"] == 1.0


def test_pools_never_hold_the_query_and_read_back(tmp_path):
    feats = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    for method in ("similar", "random"):
        pools = make_pools(feats, k=10, queries=20, method=method, seed=3)
        assert len(pools) == 20 and all(int(q) not in p and len(set(p)) == 10 for q, p in pools.items())
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps(pools))  # the original's sampler cache is this same object
        assert list(read_pools(path, 50)) == sorted(int(q) for q in pools)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"3": [3, 4]}))
    with pytest.raises(LeverError, match="never the query itself"):
        read_pools(bad, 50)
    bad.write_text(json.dumps({"3": [4, 99]}))
    with pytest.raises(LeverError, match="outside the 50 train items"):
        read_pools(bad, 50)


def test_sources_are_deduplicated_as_ordered_sequences():
    torch.manual_seed(0)
    q, pool = torch.randn(3, 8), torch.randn(3, 6, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    groups = propose(similarity_policy(q, pool), torch.randn(3, 6), 2, Sources(), gens, "ordered")
    for group in groups:
        seqs = [tuple(p["pointer"]) for p in group]
        assert len(seqs) == len(set(seqs)) and all(len(set(s)) == 2 for s in seqs)
        assert [p["gen_method"] for p in group if p["gen_method"] == "beam"] == ["beam"] * 5  # beams come first, all kept
    # the two orders of one pair are two sequences
    one = propose(similarity_policy(q[:1], pool[:1]), torch.randn(1, 6), 2, Sources(5, (), 0, 0, 0), gens[:1], "ordered")[0]
    assert len(one) == 5


def test_set_dedupe_keeps_the_first_seen_position_and_the_higher_priority_source():
    """The original's generator: proposals in the order beam, sample, retrieval, random, then one per set of items,
    kept where the set was first proposed and holding its highest-priority proposal (beam > retrieval > sample >
    random): a dict keyed by the sorted pointers whose value a higher priority replaces."""
    from lever.eval.generate import dedupe_ordered, dedupe_set

    group = [
        {"pointer": [0, 1], "gen_method": "beam"},
        {"pointer": [3, 2], "gen_method": "sample"},  # {2, 3}: retrieval proposes it later and takes this place
        {"pointer": [4, 0], "gen_method": "sample"},
        {"pointer": [2, 3], "gen_method": "retrieval"},
        {"pointer": [1, 0], "gen_method": "retrieval"},  # {0, 1}: the beam's stays
        {"pointer": [0, 4], "gen_method": "random"},  # {0, 4}: the sample's stays
        {"pointer": [5, 1], "gen_method": "random"},
    ]
    kept = [(p["pointer"], p["gen_method"]) for p in dedupe_set(group)]
    assert kept == [([0, 1], "beam"), ([2, 3], "retrieval"), ([4, 0], "sample"), ([5, 1], "random")]
    # ordered: every ordered sequence once, the first proposal of a repeated one
    assert [p["pointer"] for p in dedupe_ordered(group)] == [[0, 1], [3, 2], [4, 0], [2, 3], [1, 0], [0, 4], [5, 1]]
    assert len(dedupe_ordered(group + group[:3])) == 7


def test_retrieval_is_a_sliding_window_over_similarity_ranks():
    """The original's retrieve_pointer_by_similarity: sequence r = similarity ranks r .. r+shots-1."""
    from lever.eval.generate import retrieval_windows

    sims = torch.tensor([[0.1, 0.9, 0.0, 0.8, 0.7]])  # ranks: items 1, 3, 4, 0, 2
    assert retrieval_windows(sims, 2, 3) == [[[1, 3], [3, 4], [4, 0]]]
    assert retrieval_windows(sims, 3, 2) == [[[1, 3, 4], [3, 4, 0]]]
    assert retrieval_windows(sims, 2, 10) == [[[1, 3], [3, 4], [4, 0], [0, 2]]]  # K - shots + 1 windows fit
    src = Sources(beams=0, temperatures=(), samples=0, random=0, retrieval=3)
    step = similarity_policy(torch.randn(1, 4), torch.randn(1, 5, 4))
    got = propose(step, sims, 2, src, [torch.Generator().manual_seed(0)])[0]
    assert [(p["pointer"], p["gen_method"], p["behaviour_logp"]) for p in got] == [
        ([1, 3], "retrieval", None),
        ([3, 4], "retrieval", None),
        ([4, 0], "retrieval", None),
    ]


def test_propose_orders_sources_as_the_original_and_dedupes_by_set():
    # Pool of 4 items, 2 shots; the similarity policy and retrieval both follow the cosines [0.9, 0.8, 0.1, 0.0].
    sims = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
    step = similarity_policy(torch.tensor([[1.0, 0.0]]), torch.tensor([[[0.9, 0.44], [0.8, 0.6], [0.1, 0.99], [0.0, 1.0]]]))
    gens = [torch.Generator().manual_seed(0)]
    # a near-greedy sample proposes [0, 1] first; retrieval's window [0, 1] outranks it in its place, then [1, 2]
    src = Sources(beams=0, temperatures=(0.01,), samples=1, random=0, retrieval=2)
    kept = propose(step, sims, 2, src, gens)[0]
    assert [(p["pointer"], p["gen_method"]) for p in kept] == [([0, 1], "retrieval"), ([1, 2], "retrieval")]
    assert kept[0]["behaviour_logp"] is None  # the kept proposal carries its own source's fields
    both = propose(step, sims, 2, src, gens, "ordered")[0]
    assert [(p["pointer"], p["gen_method"]) for p in both] == [([0, 1], "sample"), ([1, 2], "retrieval")]
    # one beam [0, 1] and retrieval [0, 1], [1, 2]: set keeps the beam's [0, 1]
    src = Sources(beams=1, temperatures=(), samples=0, random=0, retrieval=2)
    kept = propose(step, sims, 2, src, gens)[0]
    assert [(p["pointer"], p["gen_method"]) for p in kept] == [([0, 1], "beam"), ([1, 2], "retrieval")]
    # random comes after retrieval: a random draw of retrieval's set is dropped, and retrieval's position is first
    src = Sources(beams=0, temperatures=(), samples=0, random=40, retrieval=1)
    kept = propose(step, sims, 2, src, gens, "ordered")[0]
    assert (kept[0]["pointer"], kept[0]["gen_method"]) == ([0, 1], "retrieval") and len(kept) == 12  # 4 x 3 sequences
    assert {p["gen_method"] for p in kept[1:]} == {"random"}
    beams2 = propose(step, sims, 2, Sources(beams=2, temperatures=(), samples=0, random=0, retrieval=0), gens, "ordered")[0]
    assert [p["pointer"] for p in beams2] == [[0, 1], [1, 0]]  # the two orders of the best pair: two prompts
    assert [p["pointer"] for p in propose(step, sims, 2, Sources(2, (), 0, 0, 0), gens)[0]] == [[0, 1]]  # set: one


def test_killed_generation_resumes_to_the_uninterrupted_file(lever, ws, tmp_path):
    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "16", "-n", "40")
    whole = tmp_path / "whole.json"
    cli(lever, ws, "data", "generate", tmp_path / "p.json", whole, "-f", tmp_path / "f.pt")

    workspace, feats = load_workspace(ws), torch.load(tmp_path / "f.pt")
    cut = tmp_path / "cut.json"
    calls = []

    def kill(done, total):
        calls.append(done)
        raise KeyboardInterrupt  # after the first chunk is flushed

    with pytest.raises(KeyboardInterrupt):
        generate_file(
            resolve_dataset(workspace),
            tmp_path / "p.json",
            feats,
            cut,
            opts=GenerateOptions(chunk=8),
            progress=kill,
            log=lambda m: None,
        )
    shard = tmp_path / "cut.json.parts" / "shard-0.jsonl"
    assert not cut.exists() and len(shard.read_text().splitlines()) == 8
    with shard.open("a") as f:
        f.write('{"query_id": 999, "rec')  # a line a kill cut short
    res = cli(lever, ws, "data", "generate", tmp_path / "p.json", cut, "-f", tmp_path / "f.pt")
    assert "resuming, 8 of 40" in res.text
    assert cut.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "cut.json.parts").exists()

    data = json.loads(whole.read_text())
    cands = [c for k, v in data.items() if k != "_meta" for c in v["pointer_candidates"]]
    keys = {
        "vqa_pred_answer",
        "vqa_correct",
        "vqa_acc_score",
        "vqa_gt_prob",
        "vqa_rel_token_f1",
        "vqa_rel_edit_sim",
        "vqa_rel_score",
    }
    assert all(keys <= c.keys() for c in cands)
    assert {c["gen_method"] for c in cands} == {"beam", "sample", "random", "retrieval"}
    # behaviour log-probs: null only for retrieval; a uniform draw from a pool of 16 is log(1/16 * 1/15)
    assert all((c["behaviour_logp"] is None) == (c["gen_method"] == "retrieval") for c in cands)
    rnd = [c["behaviour_logp"] for c in cands if c["gen_method"] == "random"]
    assert rnd and rnd == pytest.approx([math.log(1 / 16 / 15)] * len(rnd), abs=1e-6)
    stats = json.loads(cli(lever, ws, "data", "stats", whole, "--json", "--no-cache").out)
    assert stats["queries"] == 40 and stats["read"]["duplicates_dropped"] == 0
    assert stats["behaviour_logps"] == {**stats["sources"], "retrieval": 0}

    changed = cli(lever, ws, "data", "generate", tmp_path / "p.json", whole, "-f", tmp_path / "f.pt", "--redo", "--random", "0")
    assert "wrote" in changed.text and len(json.loads(whole.read_text())["_meta"]["sources"]) == 5


def test_generated_file_trains_with_lever_run(lever, ws, tmp_path):
    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "16", "-n", "60")
    cli(lever, ws, "data", "generate", tmp_path / "p.json", tmp_path / "g.json", "-f", tmp_path / "f.pt", "--beams", "3")
    res = cli(
        lever, ws, "run", ROOT / "plans" / "baseline.toml", f"data.candidates={tmp_path / 'g.json'}",
        f"data.features={tmp_path / 'f.pt'}", "rce.epochs=1", "eval.questions=20", "eval.shots=[1]", 'eval.splits=["val"]',
    )  # fmt: skip
    assert "baseline" in res.text


def test_a_trained_plan_proposes_the_beams_and_samples(lever, ws, tmp_path):
    (tmp_path / "sel.toml").write_text(f'extends = "{ROOT / "plans" / "baseline.toml"}"\n[rce]\nepochs = 1\nbatch_size = 32\n')
    cli(lever, ws, "run", tmp_path / "sel.toml", "--no-eval")
    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "16", "-n", "10")
    assert (
        "10 pools of 16 items, valid"
        in cli(lever, ws, "data", "pools", "--check", tmp_path / "p.json", "-f", tmp_path / "f.pt").text
    )
    cli(
        lever,
        ws,
        "data",
        "generate",
        tmp_path / "p.json",
        tmp_path / "g.json",
        "-f",
        tmp_path / "f.pt",
        "--policy",
        tmp_path / "sel.toml",
    )
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["_meta"]["policy"].startswith("sel seed 0 rce epoch")
    cli(lever, ws, "data", "generate", tmp_path / "p.json", tmp_path / "s.json", "-f", tmp_path / "f.pt")

    def beams(d):
        return [
            [c["pointer"] for c in v["pointer_candidates"] if c["gen_method"] == "beam"] for k, v in d.items() if k != "_meta"
        ]

    assert beams(data) != beams(json.loads((tmp_path / "s.json").read_text()))  # another policy, other beams
    # a run trained with overrides is named plan@HASH (its provenance's plan file and overrides, checked by hash)
    cli(lever, ws, "run", tmp_path / "sel.toml", "rce.batch_size=16", "--no-eval")
    hashes = sorted(h.name for h in (tmp_path / "runs" / "sel").iterdir() if (h / "seed-0" / "provenance.json").is_file())
    (over,) = [
        h for h in hashes if "rce.batch_size=16" in (tmp_path / "runs" / "sel" / h / "seed-0" / "provenance.json").read_text()
    ]
    cli(
        lever,
        ws,
        "data",
        "generate",
        tmp_path / "p.json",
        tmp_path / "o.json",
        "-f",
        tmp_path / "f.pt",
        "--policy",
        f"sel@{over[:6]}",
    )
    other = json.loads((tmp_path / "o.json").read_text())["_meta"]["policy"]
    assert other.startswith("sel seed 0 rce epoch") and other != data["_meta"]["policy"]  # the other run's weights
    res = lever("--workspace", ws, "data", "generate", tmp_path / "p.json", tmp_path / "y.json", "-f", tmp_path / "f.pt",
                "--policy", "sel@ffffff")  # fmt: skip
    assert res.code == 2 and "sel@ffffff: no run has spec hash ffffff" in res.text
    res = lever(
        "--workspace",
        ws,
        "data",
        "generate",
        tmp_path / "p.json",
        tmp_path / "x.json",
        "-f",
        tmp_path / "f.pt",
        "--policy",
        ROOT / "plans" / "plan6.toml",
    )
    assert res.code == 2 and "no selected checkpoint" in res.text


def test_generate_errors_name_the_problem(lever, ws, tmp_path):
    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "4", "-n", "5")
    res = lever(
        "--workspace", ws, "data", "generate", tmp_path / "p.json", tmp_path / "g.json", "-f", tmp_path / "f.pt", "--shots", "9"
    )
    assert res.code == 2 and "shots = 9 does not fit pools of 4" in res.text
    res = lever(
        "--workspace",
        ws,
        "data",
        "generate",
        tmp_path / "p.json",
        tmp_path / "g.json",
        "-f",
        tmp_path / "f.pt",
        "--temperatures",
        "x",
    )
    assert res.code == 2 and "--temperatures" in res.text
    res = lever("--workspace", ws, "data", "pools", tmp_path / "q.json", "-f", tmp_path / "f.pt", "--k", "600")
    assert res.code == 2 and "pool size 600" in res.text
    res = lever("--workspace", ws, "data", "pools", tmp_path / "q.json")  # no features named: data pools' own words
    assert res.code == 2 and "no features file: pass --features FILE" in res.err and "--out FILE" not in res.err


def test_generate_refuses_to_overwrite_its_pools_file(lever, ws, tmp_path):
    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    pools = tmp_path / "p.json"
    cli(lever, ws, "data", "pools", pools, "-f", tmp_path / "f.pt", "--k", "4", "-n", "5")
    before = pools.read_bytes()
    (tmp_path / "link.json").symlink_to(pools)
    (tmp_path / "sub").mkdir()
    for out in (pools, tmp_path / "sub" / ".." / "p.json", tmp_path / "link.json"):  # the file, another spelling, a symlink
        res = lever("--workspace", ws, "data", "generate", pools, out, "-f", tmp_path / "f.pt", "--redo")
        assert res.code == 2 and f"OUT {out} is the pools file {pools}" in res.text, res.text
        assert "Traceback" not in res.text
    assert pools.read_bytes() == before and not list(tmp_path.glob("*.parts"))


@pytest.mark.slow
def test_embed_pools_generate_with_tiny_clip_and_qwen(lever, tmp_path, monkeypatch):
    """OK-VQA files, a tiny random CLIP and Qwen2.5-VL: every command runs and the file is complete and valid."""
    transformers = pytest.importorskip("transformers")
    from tiny_models import write_okvqa_workspace

    import lever.eval.clip as clip_mod
    import lever.eval.hf as hf

    ws, clip_pair, (qwen, processor) = write_okvqa_workspace(tmp_path, n_train=20, n_val=4, pool=6)
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)
    monkeypatch.setattr(hf, "load_vlm", lambda *a, **k: (qwen, processor))  # the real backend, the tiny model
    feats = tmp_path / "emb.pt"
    res = cli(lever, ws, "data", "embed", "--out", feats, "--device", "cpu")
    assert "[20, 16]" in res.text
    stored = torch.load(tmp_path / "query_embeddings.pt")  # the fixture's features, made by clip_features directly
    assert torch.allclose(torch.load(feats), stored, atol=1e-5)
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", feats, "--k", "6", "-n", "5")
    out = tmp_path / "g.json"
    res = cli(
        lever, ws, "data", "generate", tmp_path / "p.json", out, "-f", feats, "--beams", "2", "--samples", "1", "--device", "cpu"
    )
    assert "image features:" in res.text and "% reused" in res.text  # a query's image is encoded once for all its sequences
    data = json.loads(out.read_text())
    pools = json.loads((tmp_path / "p.json").read_text())
    assert sorted(k for k in data if k != "_meta") == sorted(pools)
    for key, rec in data.items():
        if key == "_meta":
            continue
        assert rec["candidate_pool_ids"] == pools[key] and rec["query"]["query_id"] == int(key)
        for c in rec["pointer_candidates"]:
            assert 0 <= c["vqa_gt_prob"] <= 1 and 0 <= c["vqa_acc_score"] <= 1 and not c["eval_failed"]
            assert c["pointer_global"] == [pools[key][j] for j in c["pointer"]]
    stats = json.loads(cli(lever, ws, "data", "stats", out, "--json", "--no-cache").out)
    assert stats["queries"] == 5


@pytest.mark.slow
def test_torchrun_generation_equals_single_process(lever, ws, tmp_path):
    """Two gloo ranks take disjoint queries; rank 0 merges a file equal to one process's."""
    import subprocess
    import sys

    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "16", "-n", "30")
    args = ["data", "generate", str(tmp_path / "p.json"), "-f", str(tmp_path / "f.pt")]
    cli(lever, ws, *args[:3], tmp_path / "one.json", *args[3:])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lever_cli",
           "--workspace", str(ws), *args[:3], str(tmp_path / "two.json"), *args[3:]]  # fmt: skip
    for _ in range(2):  # a second attempt resumes: guards against torchrun / gloo start-up races on a busy box
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()


@pytest.mark.slow
def test_killed_embedding_resumes_at_its_last_chunk(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tiny_models import write_okvqa_workspace

    import lever.eval.clip as clip_mod
    from lever.eval.prepare import embed_split

    ws_path, clip_pair, _ = write_okvqa_workspace(tmp_path, n_train=20, n_val=2, pool=6)
    monkeypatch.setattr(clip_mod, "load_clip", lambda model, device="cpu": (clip_pair[0].eval(), clip_pair[1]))
    ws = resolve_dataset(load_workspace(ws_path))

    def kill(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_split(ws, "train", tmp_path / "e.pt", chunk=8, device="cpu", progress=kill, log=lambda m: None)
    assert not (tmp_path / "e.pt").exists()
    logs: list[str] = []
    res = embed_split(ws, "train", tmp_path / "e.pt", chunk=8, device="cpu", log=logs.append)
    assert res["rows"] == 20 and res["computed"] == 16 and "1 of 3 chunks" in logs[0]
    assert torch.allclose(torch.load(tmp_path / "e.pt"), torch.load(tmp_path / "query_embeddings.pt"), atol=1e-5)
    assert embed_split(ws, "train", tmp_path / "again.pt", chunk=8, device="cpu")["computed"] == 0


def test_dedupe_set_by_default_ordered_on_request_and_never_mixed_on_resume(lever, ws, tmp_path):
    cli(lever, ws, "data", "embed", "--out", tmp_path / "f.pt")
    cli(lever, ws, "data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "16", "-n", "12")
    files = {}
    for mode in ("set", "ordered"):
        files[mode] = tmp_path / f"{mode}.json"
        extra = () if mode == "set" else ("--dedupe", "ordered")
        cli(lever, ws, "data", "generate", tmp_path / "p.json", files[mode], "-f", tmp_path / "f.pt", *extra)
    got = {m: json.loads(f.read_text()) for m, f in files.items()}
    assert got["set"]["_meta"]["dedupe"] == "set" and got["ordered"]["_meta"]["dedupe"] == "ordered"
    n_set = n_ordered = 0
    for q in got["set"]:
        if q == "_meta":
            continue
        s, o = got["set"][q]["pointer_candidates"], got["ordered"][q]["pointer_candidates"]
        assert len({frozenset(c["pointer"]) for c in s}) == len(s)  # one sequence per set of items
        assert {frozenset(c["pointer"]) for c in s} == {frozenset(c["pointer"]) for c in o}  # the same sets
        n_set, n_ordered = n_set + len(s), n_ordered + len(o)
    assert n_ordered > n_set  # beams propose both orders of a good pair
    # retrieval: consecutive similarity ranks of the query's pool (the original's sliding windows), never blocks
    feats = torch.nn.functional.normalize(torch.load(tmp_path / "f.pt"), dim=-1)
    pools = json.loads((tmp_path / "p.json").read_text())
    for q, pool in pools.items():
        ranks = (feats[pool] @ feats[int(q)]).argsort(descending=True, stable=True).tolist()
        windows = [c["pointer"] for c in got["ordered"][q]["pointer_candidates"] if c["gen_method"] == "retrieval"]
        assert windows and all(any(w == ranks[r : r + 2] for r in range(3)) for w in windows), (q, windows, ranks[:4])

    workspace, feats = load_workspace(ws), torch.load(tmp_path / "f.pt")

    def kill(done, total):
        raise KeyboardInterrupt

    cut = tmp_path / "cut.json"
    with pytest.raises(KeyboardInterrupt):
        generate_file(
            resolve_dataset(workspace),
            tmp_path / "p.json",
            feats,
            cut,
            opts=GenerateOptions(chunk=4),
            progress=kill,
            log=lambda m: None,
        )
    res = lever("--workspace", ws, "data", "generate", tmp_path / "p.json", cut, "-f", tmp_path / "f.pt", "--dedupe", "ordered")
    assert res.code == 2 and "interrupted generation with other settings" in res.text
    res = lever("--workspace", ws, "data", "generate", tmp_path / "p.json", cut, "-f", tmp_path / "f.pt", "--dedupe", "sets")
    assert res.code == 2 and "--dedupe 'sets' is not known" in res.text
    import re

    help_text = re.sub(r"[\s│]+", " ", lever("data", "generate", "--help").out)
    assert "[a, b] and [b, a] both kept" in help_text  # not eaten as markup


def test_generate_answers_without_sampling_on_the_tiny_qwen(lever, tmp_path, monkeypatch):
    """`data generate` under lever-plus passes do_sample=False to the VLM's generate (the original's generator),
    where its evaluation leaves sampling to the model folder's generation config; the real backend is built
    (only the model loader is replaced) and the kwargs are captured at `generate`."""
    pytest.importorskip("transformers")
    from tiny_models import write_okvqa_workspace

    import lever.eval.hf as hf

    ws, _, (qwen, processor) = write_okvqa_workspace(tmp_path, n_train=8, n_val=2, pool=4)
    monkeypatch.setattr(hf, "load_vlm", lambda *a, **k: (qwen, processor))
    seen: list[dict] = []
    real = qwen.generate
    monkeypatch.setattr(qwen, "generate", lambda **kw: seen.append(kw) or real(**kw))
    pools = tmp_path / "p.json"
    pools.write_text(json.dumps({"0": [1, 2, 3, 4]}))
    out = tmp_path / "g.json"
    src = ("--beams", "1", "--samples", "0", "--random", "0", "--retrieval", "1")
    cli(lever, ws, "data", "generate", pools, out, "--device", "cpu", *src)
    assert seen and all(kw["do_sample"] is False for kw in seen)
    assert {(kw["num_beams"], kw["length_penalty"], kw["min_new_tokens"]) for kw in seen} == {(3, 0.0, 0)}
    assert json.loads(out.read_text())["_meta"]["protocol"]["generation"]["sampling"] == "greedy"
