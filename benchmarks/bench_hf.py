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
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import random_image, tiny_qwen, write_okvqa_fixture  # noqa: E402

from lever.eval.backend import Request  # noqa: E402
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
        backend.answer(reqs)
        backend.gt_probs(reqs)
        dt = time.perf_counter() - t0
        pre, vis = clock.seconds.get("image preprocessing", 0.0), clock.seconds.get("vision encoder", 0.0)
        print(
            f"{'data generate, 2 shots':24}{dt / len(reqs):>11.2f}{len(reqs) / dt:>13.2f}{pre / dt:>12.0%}{vis / dt:>9.0%}{1 - (pre + vis) / dt:>7.0%}"
            "   (per scored sequence: answer + ground-truth probability)"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--plans", type=int, default=0, help="only count VLM loads for this many plans' backends")
    ap.add_argument("--coco", action="store_true", help="the tiny model on COCO-size images (see above)")
    args = ap.parse_args()
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
