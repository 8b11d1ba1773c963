"""Throughput of the `hf` backend: batched generation vs one question at a time.

Default: the tiny random Qwen2.5-VL of the tests, on CPU (target: batch 8 >= 3x one at a time).
--real-size: a randomly initialised model of Qwen2.5-VL-3B's configuration (needs a GPU),
with 640x480 images, reporting questions per second.

    python benchmarks/bench_hf.py [--questions 32] [--shots 0 1 2 4] [--threads N] [--real-size]
    python benchmarks/bench_hf.py --plans 3   # model loads and seconds for `lever run A B C`'s backends
    python benchmarks/bench_hf.py --coco [--questions 8] [--threads 2]

--coco: the tiny model with Qwen2.5-VL's default pixel limits on 640x480 (COCO-size) images, which
the processor resizes to 644x476 (391 visual tokens each): seconds per question at 1-4 shots (the
evaluation), scored sequences per second at 2 shots (`data generate`: an answer and the ground
truth's probability per sequence), the share of the time in image preprocessing and in the vision
encoder, and the peak RSS.

--side-by-side: lever and the original project's own inference on the same prompts, each in a fresh
process with one torch thread: the tiny Qwen2.5-VL with Qwen2.5-VL's default pixel limits, 640x480 images,
the lever-plus protocol (the original's prompt, image sizing and generation settings: 3 beams, 5 new
tokens, length_penalty 0, min_new_tokens 0, the tokenizer's eos). Q val questions (--questions, default
24), each with its own image, take their demonstrations from a pool of 16 train items (a seeded ranking
per question; k shots = its first k, as a selector's prefix), at 1-4 shots. Reported per shot count:
seconds per question of lever at its defaults (eval.batch_size 8, answered in `lever evaluate`'s chunks),
lever at batch 1, and the original; the peak RSS of each process; whether the answers (and the prompts'
input_ids) are identical. Then `data generate`'s scoring: 8 two-shot sequences for each of 8 questions from the
pool, answered and given their ground truth's probability (`score_requests`), by today's fast path and
by the plain path (what lever did before: generate per padded batch, then a second pass for the
probabilities); sequences per second and whether the records are identical.

    python benchmarks/bench_hf.py --side-by-side --original DIR [--original-python PY] [--questions 24]

DIR: a checkout of yunsoft2019/Lever-Plus, code unchanged: its open_mmicl.interface.Qwen2VLInterface
(prepare_input, then generate with the inferencer's arguments, as its icl_inferencer does per question)
on the same in-memory tiny model and processor (its from_pretrained calls are pointed at them). What it
needs beyond lever's environment: loguru and qwen-vl-utils (pip, e.g. into a venv with a .pth file naming
lever's site-packages; --original-python names its python). Two imports it makes but never uses on this
path get stand-ins: openicl (its PromptTemplate builds texts from dataset rows; the texts here come from
the lever-plus templates, the original's) and torchvision (qwen_vl_utils imports it for videos).
Without --original only lever's rows are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("tests", "")]  # "": lever, for --original-python

from tiny_models import random_image, tiny_qwen, write_okvqa_fixture  # noqa: E402

from lever.eval.backend import Request, demo_answer  # noqa: E402
from lever.eval.hf import HFBackend  # noqa: E402
from lever.eval.okvqa import load_okvqa  # noqa: E402


def real_size_qwen() -> tuple[object, object]:
    """Random weights in Qwen2.5-VL-3B-Instruct's shapes (bf16 on CUDA); the tests' byte tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    _, processor = tiny_qwen()
    tok = processor.tokenizer
    processor.image_processor = Qwen2VLImageProcessorPil()  # the real default pixel limits
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")
    }
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return model.eval(), processor


def qps(backend: HFBackend, reqs: list[Request], repeats: int = 3) -> float:
    """Questions per second over `reqs`: the best of `repeats` runs, after one warm-up batch."""
    backend.answer(reqs[: backend.batch_size])
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = backend.answer(reqs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        assert not any(r.failed for r in out), [r.error for r in out if r.failed][:1]
    return len(reqs) / best


def plan_loads(n_plans: int) -> None:
    """Build the backend of `n_plans` plans from one model folder, as `lever run A B C` does; count weight loads.

    "one load per plan" clears lever's model cache before each backend (the behaviour before it existed);
    "shared" keeps it. Same folder, same process, same run.
    """
    import transformers

    import lever.eval.hf as hf

    model, processor = tiny_qwen()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        transformers.AutoProcessor.from_pretrained = lambda *a, **k: processor  # the tiny processor needs no files
        loads = []
        real = transformers.AutoModelForImageTextToText.from_pretrained
        transformers.AutoModelForImageTextToText.from_pretrained = lambda *a, **k: loads.append(1) or real(*a, **k)
        for label, clear in (("one load per plan", True), ("shared", False)):
            hf._LOADED.clear()
            loads.clear()
            t0 = time.perf_counter()
            for _ in range(n_plans):
                if clear:
                    hf._LOADED.clear()
                HFBackend(Path(tmp), device="cpu")
            print(f"  {label:18} {len(loads)} weight loads, {time.perf_counter() - t0:.3f} s for {n_plans} plans")


class Clock:
    """Seconds spent inside wrapped callables (image preprocessing, the vision encoder)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

        return timed


def coco(args) -> None:
    """The tiny Qwen2.5-VL on COCO-size images (see the module docstring)."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    model, processor = tiny_qwen()
    processor.image_processor = Qwen2VLImageProcessorPil()  # the default pixel limits (56*56 .. 28*28*1280)
    clock = Clock()
    images = processor.image_processor
    images.preprocess = clock.wrap("image preprocessing", images.preprocess)
    model.model.visual.forward = clock.wrap("vision encoder", model.model.visual.forward)
    shots = [s for s in args.shots if s > 0] or [1, 2, 3, 4]
    with tempfile.TemporaryDirectory() as tmp:
        n_items = args.questions + max(shots)
        q, a, image_dir = write_okvqa_fixture(Path(tmp), n=n_items)
        for i in range(n_items):  # COCO-sized images: 640x480
            random_image(image_dir / f"COCO_val2014_{500 + i:012d}.jpg", seed=i, size=(480, 640))
        items = load_okvqa(q, a, image_dir, split="val")
        grid = images(images=[Image.open(items[0].image).convert("RGB")])["image_grid_thw"][0]
        h, w = int(grid[1]) * 14, int(grid[2]) * 14
        tokens = int(grid.prod()) // 4  # patches merged 2x2
        print(
            f"tiny Qwen2.5-VL on cpu, {torch.get_num_threads()} torch threads, 640x480 images resized to {w}x{h}: "
            f"{int(grid.prod())} patches, {tokens} visual tokens each; {args.questions} questions, 5 new tokens, 3 beams, batch 8"
        )
        print(f"{'':24}{'s/question':>11}{'questions/s':>13}{'preprocess':>12}{'vision':>9}{'rest':>7}")
        for k in shots:
            reqs = [Request("val", items[i], items[i + 1 : i + 1 + k]) for i in range(args.questions)]
            backend = HFBackend.from_pretrained_objects(model, processor, "cpu", 8, 5, 3)
            backend.answer(reqs[:1])  # warm-up
            clock.seconds.clear()
            t0 = time.perf_counter()
            out = backend.answer(reqs)
            dt = time.perf_counter() - t0
            assert not any(r.failed for r in out)
            pre, vis = clock.seconds.get("image preprocessing", 0.0), clock.seconds.get("vision encoder", 0.0)
            print(
                f"{f'evaluation, {k} shots':24}{dt / len(reqs):>11.2f}{len(reqs) / dt:>13.2f}{pre / dt:>12.0%}{vis / dt:>9.0%}{1 - (pre + vis) / dt:>7.0%}"
            )
        reqs = [Request("val", items[i], items[i + 1 : i + 3]) for i in range(args.questions)]  # 2-shot sequences
        backend = HFBackend.from_pretrained_objects(model, processor, "cpu", 8, 5, 3)
        clock.seconds.clear()
        t0 = time.perf_counter()
        backend.answer_with_gt_probs(reqs)  # as data generate asks: one prefill gives both
        dt = time.perf_counter() - t0
        pre, vis = clock.seconds.get("image preprocessing", 0.0), clock.seconds.get("vision encoder", 0.0)
        print(
            f"{'data generate, 2 shots':24}{dt / len(reqs):>11.2f}{len(reqs) / dt:>13.2f}{pre / dt:>12.0%}{vis / dt:>9.0%}{1 - (pre + vis) / dt:>7.0%}"
            "   (per scored sequence: answer + ground-truth probability)"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


# --------------------------------------------------------------------------- side by side with the original

SBS_POOL = 16  # train items the demonstrations come from
SBS_SHOTS = (1, 2, 3, 4)
SBS_SEQS = 8  # data generate: two-shot sequences scored per question, for the first SBS_GEN_QUESTIONS questions
SBS_GEN_QUESTIONS = 8


def sbs_world(root: Path, questions: int) -> tuple[list, list, list]:
    """(val items, train pool items, extra item for the warm-up) of the side-by-side fixture (written if absent)."""
    from lever.eval.okvqa import load_okvqa

    n = questions + SBS_POOL + 1
    if not (root / "images").is_dir():
        _, _, image_dir = write_okvqa_fixture(root, n=n)
        for i in range(n):  # COCO-sized images: 640x480
            random_image(image_dir / f"COCO_val2014_{500 + i:012d}.jpg", seed=i, size=(480, 640))
    items = load_okvqa(root / "OpenEnded_mscoco_val2014_questions.json", root / "mscoco_val2014_annotations.json",
                       root / "images", split="val")  # fmt: skip
    return items[:questions], items[questions : questions + SBS_POOL], items[-1:]


def sbs_rankings(questions: int) -> list[list[int]]:
    """Per question, a seeded ranking of the pool: its k-shot demonstrations are the first k."""
    g = torch.Generator().manual_seed(0)
    return [torch.randperm(SBS_POOL, generator=g).tolist() for _ in range(questions)]


def sbs_model() -> tuple[object, object]:
    """The tiny Qwen2.5-VL with Qwen2.5-VL's default pixel limits (the same weights in every process)."""
    from transformers import Qwen2VLImageProcessorPil

    model, processor = tiny_qwen(seed=0)
    processor.image_processor = Qwen2VLImageProcessorPil()
    return model, processor


def _digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def sbs_lever(root: Path, questions: int, batch_size: int | None) -> dict:
    """Lever's side (in its own process): seconds, answers and prompt digests per shot count, data generate."""
    from lever.eval.evaluate import chunk_bounds
    from lever.eval.protocol import load_protocol
    from lever.eval.score import score_requests
    from lever.spec.schema import EvalSpec

    spec = EvalSpec()
    bs = batch_size or spec.batch_size
    model, processor = sbs_model()
    protocol = load_protocol("lever-plus")
    val, pool, extra = sbs_world(root, questions)
    ranks = sbs_rankings(questions)
    be = HFBackend.from_pretrained_objects(model, processor, "cpu", bs, spec.max_new_tokens, spec.num_beams, protocol)
    be.answer([Request("val", extra[0])])  # warm-up on an image used nowhere else
    out: dict = {"batch_size": bs, "seconds": {}, "answers": {}, "ids": {}}
    for k in SBS_SHOTS:
        reqs = [Request("val", q, [pool[j] for j in ranks[i][:k]]) for i, q in enumerate(val)]
        t0 = time.perf_counter()
        answers = [r for s, e in chunk_bounds(len(reqs), bs) for r in be.answer(reqs[s:e])]  # as `lever evaluate`
        out["seconds"][k] = time.perf_counter() - t0
        out["answers"][k] = [r.raw for r in answers]
        out["ids"][k] = [_digest(be._prompt(r, False).ids) for r in reqs]
    out["cache"] = be.cache_summary()
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if batch_size is None:  # data generate's scoring: the fast path and the plain path (before), same sequences
        g = torch.Generator().manual_seed(1)
        gen_val = val[:SBS_GEN_QUESTIONS]
        seqs = [[torch.randperm(SBS_POOL, generator=g)[:2].tolist() for _ in range(SBS_SEQS)] for _ in gen_val]
        records = {}
        for label, fast in (("plain", False), ("fast", True)):
            be.fast = fast
            be.images._entries.clear()  # each starts from a cold image cache
            t0 = time.perf_counter()
            recs = [
                score_requests(be, protocol.metric, [Request("train", q, [pool[j] for j in s]) for s in ss])
                for q, ss in zip(gen_val, seqs)
            ]
            out[f"generate_{label}_s"] = time.perf_counter() - t0
            records[label] = recs
        out["generate_sequences"] = len(gen_val) * SBS_SEQS
        out["generate_identical"] = records["plain"] == records["fast"]
        diff = [(a, b) for qa, qb in zip(records["plain"], records["fast"]) for a, b in zip(qa, qb) if a != b]
        out["generate_differences"] = len(diff)
    return out


def sbs_original(root: Path, questions: int, original: Path) -> dict:
    """The original's side (in its own process): its Qwen2VLInterface, code unchanged, on the same prompts."""
    stubs = Path(tempfile.mkdtemp())
    (stubs / "openicl").mkdir()
    (stubs / "openicl" / "__init__.py").write_text("class PromptTemplate:\n    def __init__(self, *a, **k): pass\n")
    (stubs / "torchvision" / "transforms").mkdir(parents=True)
    (stubs / "torchvision" / "__init__.py").write_text("from . import io, transforms\n__version__ = '0'\n")
    (stubs / "torchvision" / "io.py").write_text("")
    (stubs / "torchvision" / "transforms" / "__init__.py").write_text("class InterpolationMode:\n    BICUBIC = 3\n")
    import transformers

    from lever.eval.protocol import load_protocol

    model, processor = sbs_model()  # before the stand-ins are visible: transformers never sees them
    sys.path[:0] = [str(original), str(stubs)]
    transformers.AutoProcessor.from_pretrained = lambda *a, **k: processor
    transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained = lambda *a, **k: model
    import types

    for name in ("open_mmicl", "open_mmicl.interface"):  # the packages without their __init__ (which imports the
        pkg = types.ModuleType(name)  # Flamingo and IDEFICS interfaces: open_clip, open_flamingo)
        pkg.__path__ = [str(original.joinpath(*name.split(".")))]
        sys.modules[name] = pkg
    from open_mmicl.interface.qwen2vl_interface import Qwen2VLInterface

    protocol = load_protocol("lever-plus")
    iface = Qwen2VLInterface(
        model_name="tiny",
        load_from_local=True,
        precision="bf16",
        device="cpu",
        prompt_template="",
        column_token_map={},
        instruction="",
        image_field="image",
        label_field="answer",
        system_prompt=protocol.system_prompt,
    )  # fmt: skip  (precision: its "fp32" path fails (`with suppress:`); "bf16" is CUDA autocast, off on CPU: fp32)
    tok = iface.tokenizer
    gen = {"num_beams": 3, "max_new_tokens": 5, "length_penalty": 0.0, "min_new_tokens": 0}  # its OK-VQA settings
    val, pool, extra = sbs_world(root, questions)
    ranks = sbs_rankings(questions)

    def prompt(query, demos) -> list:
        parts = []
        for d in demos:
            parts += [d.image, protocol.demo_template.format(question=d.question, answer=demo_answer(d))]
        return parts + [query.image, protocol.query_template.format(question=query.question)]

    def ask(query, demos) -> tuple[str, list[int]]:
        data = iface.prepare_input([prompt(query, demos)], is_last_for_generation=True)  # its dataset transform
        n = int(data["attention_mask"].shape[1])
        ids = data["input_ids"][0].tolist()
        with torch.inference_mode():
            out = iface.generate(**data, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **gen).tolist()
        return tok.batch_decode([o[n:] for o in out], skip_special_tokens=True)[0], ids

    ask(extra[0], [])  # warm-up
    out: dict = {"seconds": {}, "answers": {}, "ids": {}}
    for k in SBS_SHOTS:
        t0 = time.perf_counter()
        got = [ask(q, [pool[j] for j in ranks[i][:k]]) for i, q in enumerate(val)]
        out["seconds"][k] = time.perf_counter() - t0
        out["answers"][k] = [a for a, _ in got]
        out["ids"][k] = [_digest(ids) for _, ids in got]
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def side_by_side(args) -> None:
    """Run each side in a fresh one-thread process on one fixture; print the table (see the module docstring)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    me = [str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        sbs_world(Path(tmp), args.questions)
        runs = {}
        sides = [("lever, defaults", [sys.executable, *me, "--child", "lever"])]
        sides.append(("lever, batch 1", [sys.executable, *me, "--child", "lever", "--child-batch", "1"]))
        if args.original:
            py = args.original_python or sys.executable
            sides.append(("original", [py, *me, "--child", "original", "--original", args.original]))
        for label, cmd in sides:
            cmd += ["--child-dir", tmp, "--questions", str(args.questions)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{label} failed:\n{res.stderr[-3000:]}")
            runs[label] = json.loads(res.stdout.splitlines()[-1])
    q = args.questions
    print(f"tiny Qwen2.5-VL, cpu, 1 torch thread, {q} questions with 640x480 images, lever-plus protocol, 3 beams")
    print(
        f"{'shots':>5} "
        + "".join(f"{label + ' s/q':>22}" for label in runs)
        + f"{'answers identical':>19}{'prompts identical':>19}"
    )
    for k in map(str, SBS_SHOTS):
        same = all(r["answers"][k] == runs["lever, defaults"]["answers"][k] for r in runs.values())
        ids = all(r["ids"][k] == runs["lever, defaults"]["ids"][k] for r in runs.values())
        row = "".join(f"{r['seconds'][k] / q:>22.3f}" for r in runs.values())
        print(f"{k:>5} {row}{str(same):>19}{str(ids):>19}")
    total = {label: sum(r["seconds"].values()) / (q * len(SBS_SHOTS)) for label, r in runs.items()}
    print(f"{'all':>5} " + "".join(f"{t:>22.3f}" for t in total.values()))
    print(f"{'peak':>5} " + "".join(f"{r['peak_mib']:>18.0f} MiB" for r in runs.values()))
    if "original" in runs:
        o = total["original"]
        print("questions per second vs the original: " + ", ".join(f"{label} {o / t:.2f}x" for label, t in total.items()))
    d = runs["lever, defaults"]
    print(d["cache"])
    n = d["generate_sequences"]
    print(
        f"data generate scoring ({n} two-shot sequences, answer + ground-truth probability): "
        f"plain path (before) {n / d['generate_plain_s']:.2f} seq/s, fast path {n / d['generate_fast_s']:.2f} seq/s "
        f"({d['generate_plain_s'] / d['generate_fast_s']:.2f}x); records identical: {d['generate_identical']}"
        f" ({d['generate_differences']} differ)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--plans", type=int, default=0, help="only count VLM loads for this many plans' backends")
    ap.add_argument("--coco", action="store_true", help="the tiny model on COCO-size images (see above)")
    ap.add_argument("--side-by-side", action="store_true", help="lever and the original on the same prompts (see above)")
    ap.add_argument("--original", default="", help="--side-by-side: a checkout of the original project")
    ap.add_argument("--original-python", default="", help="--original: the Python that runs it (default: this one)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one side of --side-by-side, in its own process: a JSON line on stdout
        torch.set_num_threads(1)
        root = Path(args.child_dir)
        if args.child == "lever":
            res = sbs_lever(root, args.questions, args.child_batch)
        else:
            res = sbs_original(root, args.questions, Path(args.original))
        print(json.dumps(res))
        return
    if args.side_by_side:
        return side_by_side(args)
    if args.plans:
        print(f"tiny Qwen2.5-VL from a model folder, {args.plans} plans' backends")
        plan_loads(args.plans)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.coco:
        return coco(args)

    with tempfile.TemporaryDirectory() as tmp:
        n_items = args.questions + max(args.shots)
        q, a, image_dir = write_okvqa_fixture(Path(tmp), n=n_items)
        if args.real_size:
            for i in range(n_items):  # COCO-sized images: 640x480
                random_image(image_dir / f"COCO_val2014_{500 + i:012d}.jpg", seed=i, size=(480, 640))
            model, processor, device = *real_size_qwen(), "cuda"
        else:
            model, processor, device = *tiny_qwen(), "cpu"
        items = load_okvqa(q, a, image_dir, split="val")

        print(
            f"{'real-size (3B config)' if args.real_size else 'tiny'} Qwen2.5-VL on {device}, "
            f"{args.questions} questions, 5 new tokens, {torch.get_num_threads()} torch threads"
        )
        for shots in args.shots:
            reqs = [Request("val", items[i], items[i + 1 : i + 1 + shots]) for i in range(args.questions)]
            for beams in (3, 1):
                single = qps(HFBackend.from_pretrained_objects(model, processor, device, 1, 5, beams), reqs)
                batched = qps(HFBackend.from_pretrained_objects(model, processor, device, 8, 5, beams), reqs)
                print(
                    f"  shots={shots} num_beams={beams}: one at a time {single:7.2f} q/s | "
                    f"batch 8 {batched:7.2f} q/s | speed-up {batched / single:.1f}x"
                )


if __name__ == "__main__":
    main()
