"""The `hf` backend on a tiny random Qwen2.5-VL built in code (CPU, no download).

What the random model says is never asserted; the prompt, padding, batching and
failure handling are, and that the fast path (one prefill per prompt, cached image features,
batches of one length) answers as `model.generate` does on the processor's own inputs.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import GEN_PROMPT, tiny_qwen, write_okvqa_fixture  # noqa: E402

from lever.errors import LeverError  # noqa: E402
from lever.eval.backend import Request  # noqa: E402
from lever.eval.hf import HFBackend, prompt_images, require_transformers, resolve_dtype  # noqa: E402
from lever.eval.okvqa import load_okvqa  # noqa: E402

IMAGE_TOKENS = 4  # the tiny processor turns every image into 4 tokens


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen(seed=0)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("okvqa")
    return load_okvqa(*write_okvqa_fixture(root, n=6), split="val")


def backend(qwen, fast: bool = True, **kw) -> HFBackend:
    """The backend on the tiny model; fast=False takes the plain path (generate on the processor's batch)."""
    model, processor = qwen
    be = HFBackend.from_pretrained_objects(model, processor, device="cpu", **kw)
    assert be.fast  # the tiny Qwen2.5-VL qualifies
    be.fast = fast
    return be


def requests(items, n: int = 6) -> list[Request]:
    """Query i with 0, 1 or 2 demos, so the prompts have different lengths."""
    return [Request("val", items[i], [items[(i + 1 + j) % len(items)] for j in range(i % 3)]) for i in range(n)]


def test_prompt_layout(qwen, items):
    req = Request("val", items[0], [items[3], items[1]])
    text = backend(qwen).render(req)
    demo3 = f"Question:{items[3].question} Short answer:ans3"
    demo1 = f"Question:{items[1].question} Short answer:ans1"
    query = f"Question:{items[0].question} Short answer:"
    assert text.index(demo3) < text.index(demo1) < text.rindex(query)  # demos in the order given
    assert text.endswith(query + GEN_PROMPT)  # the query closes the user turn; assistant turn opened
    assert text.count("<|im_start|>user") == 1  # one user message
    # Each item is preceded by its image: vision block, then its text.
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>Question:") == 3


def test_left_padding_and_image_tokens(qwen, items):
    be = backend(qwen)
    short, long = Request("val", items[0]), Request("val", items[1], [items[2], items[3]])
    images = prompt_images(short) + prompt_images(long)
    batch = be.encode([be.render(short), be.render(long)], images)
    mask, ids = batch["attention_mask"], batch["input_ids"]  # [2, T]
    pad = qwen[1].tokenizer.pad_token_id
    n_short = int(mask[0].sum())
    assert n_short < mask.shape[1] and bool(mask[1].all())
    assert mask[0, : mask.shape[1] - n_short].eq(0).all() and mask[0, -n_short:].eq(1).all()  # pads on the LEFT
    assert ids[0, : mask.shape[1] - n_short].eq(pad).all()
    image_id = qwen[1].image_token_id
    assert ids[0].eq(image_id).sum() == 1 * IMAGE_TOKENS and ids[1].eq(image_id).sum() == 3 * IMAGE_TOKENS
    assert batch["pixel_values"].shape[0] == 4 * 4 * 4  # 4 images x 16 patches of 14x14


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_equals_one_at_a_time(qwen, items, beams):
    reqs = requests(items)
    plain = backend(qwen, fast=False, batch_size=1, num_beams=beams).answer(reqs)
    batched = backend(qwen, batch_size=3, num_beams=beams).answer(reqs)
    single = backend(qwen, batch_size=1, num_beams=beams).answer(reqs)
    assert len(batched) == len(reqs) and not any(r.failed for r in batched)
    assert [r.raw for r in batched] == [r.raw for r in single] == [r.raw for r in plain]
    padded = backend(qwen, fast=False, batch_size=3, num_beams=beams).answer(reqs)  # left padding, the plain path
    assert [r.raw for r in padded] == [r.raw for r in plain]
    prefetching = backend(qwen, fast=False, batch_size=3, num_beams=beams)
    prefetching.prefetch = True  # the CUDA default: next batch prepared in a helper thread
    assert [r.raw for r in prefetching.answer(reqs)] == [r.raw for r in plain]


@pytest.mark.parametrize("fast", [True, False])
def test_only_new_tokens_are_decoded(qwen, items, monkeypatch, fast):
    be = backend(qwen, fast=fast, batch_size=3, max_new_tokens=4, num_beams=1)
    calls = []
    generate, decode = be.model.generate, be.processor.batch_decode

    def spy_generate(**kw):
        calls.append({"prompt_len": kw["input_ids"].shape[1], "out": generate(**kw)})
        return calls[-1]["out"]

    def spy_decode(ids, **kw):
        calls[-1]["decoded"] = ids
        return decode(ids, **kw)

    monkeypatch.setattr(be.model, "generate", spy_generate)
    monkeypatch.setattr(be.processor, "batch_decode", spy_decode)
    be.answer(requests(items, 3))
    for c in calls:
        assert torch.equal(c["decoded"], c["out"][:, c["prompt_len"] :]) and c["decoded"].shape[1] <= 4
    assert sum(c["decoded"].shape[0] for c in calls) == 3


def test_beam_search_defaults(qwen, items):
    be = backend(qwen)
    assert (be.batch_size, be.max_new_tokens, be.num_beams) == (8, 5, 3)  # the original's settings
    out = be.answer(requests(items, 3))
    assert len(out) == 3 and all(isinstance(r.raw, str) and not r.failed for r in out)


@pytest.mark.parametrize("fast", [True, False])
def test_missing_image_fails_only_that_question(qwen, tmp_path, fast):
    its = load_okvqa(*write_okvqa_fixture(tmp_path, n=4, skip_images=(2,)), split="val")
    reqs = [Request("val", its[0]), Request("val", its[2]), Request("val", its[1], [its[2]]), Request("val", its[3])]
    be = backend(qwen, fast=fast, batch_size=4, num_beams=1)
    out = be.answer(reqs)
    assert [r.failed for r in out] == [False, True, True, False]
    assert "query 1014" in out[1].error and "COCO_val2014_000000000502.jpg" in out[1].error
    assert "demonstration 1014" in out[2].error
    alone = be.answer([reqs[0], reqs[3]])  # the survivors answer as if the others were never there
    assert [out[0].raw, out[3].raw] == [r.raw for r in alone]


def test_generation_error_fails_only_that_question(qwen, items, monkeypatch):
    be = backend(qwen, fast=False, batch_size=3, num_beams=1)
    bad = items[1].question
    encode, generate, texts_of = be.encode, be.generate, {}

    def spy_encode(texts, images):
        inputs = encode(texts, images)
        texts_of[id(inputs)] = texts
        return inputs

    def flaky(inputs):  # fails for any batch holding the bad question
        if any(bad in t for t in texts_of[id(inputs)]):
            raise RuntimeError("boom")
        return generate(inputs)

    monkeypatch.setattr(be, "encode", spy_encode)
    monkeypatch.setattr(be, "generate", flaky)
    out = be.answer([Request("val", items[i]) for i in range(5)])  # batches [0, 1, 2] and [3, 4]
    assert [r.failed for r in out] == [False, True, False, False, False]
    assert "RuntimeError: boom" in out[1].error and "question 1007" in out[1].error


def test_fast_path_generation_error_fails_only_that_question(qwen, items, monkeypatch):
    be = backend(qwen, batch_size=8, num_beams=1)
    same = [Request("val", items[i]) for i in (0, 4, 2)]  # 4 and 2: questions of one token count, one batch
    assert be._groups({i: be._prompt(r, False) for i, r in enumerate(same)}) == [[1, 2], [0]]
    bad = be._image_features(items[4], "query")[1]  # the cached features of the bad question's image
    run = be._generate_group

    def flaky(prompts, answers, gt):
        if any(f is bad for p in prompts for f in p.features):
            raise RuntimeError("boom")
        return run(prompts, answers, gt)

    monkeypatch.setattr(be, "_generate_group", flaky)
    out = be.answer(same)
    assert [r.failed for r in out] == [False, True, False]
    assert "RuntimeError: boom" in out[1].error and f"question {items[4].question_id}" in out[1].error


@pytest.mark.parametrize("prefetch", [False, True])
def test_encoding_error_fails_only_that_question(qwen, items, monkeypatch, prefetch):
    be = backend(qwen, fast=False, batch_size=3, num_beams=1)
    be.prefetch = prefetch
    bad = items[2].question
    encode = be.encode

    def flaky(texts, images):
        if any(bad in t for t in texts):
            raise ValueError("cannot encode")
        return encode(texts, images)

    monkeypatch.setattr(be, "encode", flaky)
    out = be.answer([Request("val", items[i]) for i in range(4)])
    assert [r.failed for r in out] == [False, False, True, False]
    assert "ValueError: cannot encode" in out[2].error
    fast = backend(qwen, batch_size=3, num_beams=1)
    prompt = fast._prompt
    monkeypatch.setattr(fast, "_prompt", lambda r, gt: prompt(r, gt) if r.query.question != bad else 1 / 0)
    out = fast.answer([Request("val", items[i]) for i in range(4)])
    assert [r.failed for r in out] == [False, False, True, False]
    assert "ZeroDivisionError" in out[2].error and f"question {items[2].question_id}" in out[2].error


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(LeverError, match="does not exist"):
        HFBackend(tmp_path / "nope")
    with pytest.raises(LeverError, match="no config.json"):
        HFBackend(tmp_path)


def test_bad_settings_are_clear_errors(qwen):
    with pytest.raises(LeverError, match="batch_size"):
        backend(qwen, batch_size=0)
    with pytest.raises(LeverError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_loads_from_a_model_dir(qwen, items, tmp_path, monkeypatch):
    import transformers

    model, processor = qwen
    model.save_pretrained(tmp_path)
    # Qwen2.5-VL's own processor needs torchvision; hand the tiny image-only one to the loader.
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)
    be = HFBackend(tmp_path, device="auto", num_beams=1)
    assert be.device.type in ("cpu", "cuda") and be.settings["model"] == str(tmp_path)
    assert be.dtype == ("bfloat16" if be.device.type == "cuda" else "float32")
    assert not be.answer([Request("val", items[0])])[0].failed


def test_the_vlm_loads_once_per_process(qwen, tmp_path, monkeypatch):
    """`lever run A B C` and several seeds build one backend each, but load the weights once."""
    import transformers

    model, processor = qwen
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: processor)
    loads = []
    real = transformers.AutoModelForImageTextToText.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k)
    )
    first = HFBackend(tmp_path, device="cpu", num_beams=1)
    second = HFBackend(tmp_path, device="cpu", num_beams=3, batch_size=2)  # other generation settings, same weights
    assert len(loads) == 1 and second.model is first.model and second.num_beams == 3
    HFBackend(tmp_path, device="cpu", dtype="bf16")  # another dtype is another model
    assert len(loads) == 2


def test_dir_without_image_processor_is_a_clear_error(qwen, tmp_path):
    model, processor = qwen
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)  # a tokenizer but no image processor
    with pytest.raises(LeverError, match="image-text processor"):
        HFBackend(tmp_path, device="cpu")


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(LeverError) as err:
        require_transformers()
    assert "pip install -e '.[hf]'" in str(err.value)


def test_a_demonstration_image_is_read_once(items, monkeypatch):
    import lever.eval.hf as hf

    hf._demo_image.cache_clear()
    reads = []
    real = hf.load_image
    monkeypatch.setattr(hf, "load_image", lambda path: reads.append(path) or real(path))
    demo = items[1]
    for q in (items[0], items[2], items[3]):  # three questions with the same demonstration
        assert len(prompt_images(Request("val", q, [demo]))) == 2
    assert reads.count(demo.image) == 1 and len(reads) == 4  # the demonstration once, each query once


# ----------------------------------------------------------------------------------------- the fast path


@pytest.fixture(scope="module")
def shots_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("okvqa_shots")
    return load_okvqa(*write_okvqa_fixture(root, n=12), split="val")


def shot_requests(items) -> list[Request]:
    """Every shot count 0-8 for three queries, demonstrations cycling through the fixture."""
    return [Request("val", items[i], [items[(i + 1 + j) % len(items)] for j in range(s)]) for s in range(9) for i in range(3)]


def test_prompt_tokens_equal_the_processors(qwen, shots_items):
    """The fast path's input_ids and image grids are the processor's, for every shot count."""
    be = backend(qwen)
    for req in shot_requests(shots_items):
        ref = be.encode([be.render(req)], prompt_images(req, be.protocol))
        p = be._prompt(req, gt=False)
        assert p.ids == ref["input_ids"][0].tolist()
        assert torch.equal(torch.stack(p.grids), ref["image_grid_thw"])
        feats = be.model.get_image_features(ref["pixel_values"], ref["image_grid_thw"], return_dict=True).pooler_output
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(p.features, feats))


def test_one_prefill_answers_as_generate_beam_search(qwen, shots_items, monkeypatch):
    """Same strings and beam scores as generate's own beam search on the processor's inputs, shots 0-8."""
    model = qwen[0]
    generate, scores = model.generate, []

    def with_scores(**kw):  # record each row's final beam score, return what generate returns
        out = generate(**kw, output_scores=True, return_dict_in_generate=True)
        scores.extend(out.sequences_scores.tolist())
        return out.sequences

    monkeypatch.setattr(model, "generate", with_scores)
    reqs = shot_requests(shots_items)
    ref = backend(qwen, fast=False, batch_size=1).answer(reqs)  # generate alone: 3 beams, one prompt at a time
    ref_scores, scores[:] = scores[:], []
    be = backend(qwen, batch_size=8)
    got = be.answer(reqs)
    order = [i for g in be._groups({i: be._prompt(r, False) for i, r in enumerate(reqs)}) for i in g]
    got_scores = [0.0] * len(reqs)
    for i, s in zip(order, scores):
        got_scores[i] = s
    assert [r.raw for r in got] == [r.raw for r in ref] and not any(r.failed for r in got)
    assert got_scores == pytest.approx(ref_scores, rel=2e-5)  # equal to fp32 rounding (sums in another order)


def test_the_prompt_is_prefilled_once_not_once_per_beam(qwen, items, monkeypatch):
    """The language model sees the long prompt in one row per question; generate alone runs it per beam."""
    seen = []
    lm = qwen[0].model.language_model
    forward = lm.forward
    monkeypatch.setattr(lm, "forward", lambda *a, **kw: seen.append(kw["inputs_embeds"].shape[:2]) or forward(*a, **kw))
    req = Request("val", items[0], [items[1], items[2]])
    for fast in (True, False):
        seen.clear()
        backend(qwen, fast=fast, num_beams=3).answer([req])
        rows_of_longest = max(seen, key=lambda s: s[1])[0]
        assert rows_of_longest == (1 if fast else 3)


def test_image_features_are_computed_once_and_keyed_by_content(qwen, shots_items, tmp_path):
    from lever.eval.image_cache import cache_for

    be = backend(qwen)
    be.images._entries.clear()
    be.images.hits = be.images.misses = 0
    reqs = shot_requests(shots_items)
    first = be.answer(reqs)
    distinct = {it.image for r in reqs for it in [*r.demos, r.query]}
    assert be.images.misses == len(distinct) and len(be.images) == len(distinct)
    again = backend(qwen).answer(reqs)  # another backend on the same model shares the cache: all hits
    assert [r.raw for r in again] == [r.raw for r in first]
    assert be.images.misses == len(distinct) and "0 encoded" not in be.cache_summary()
    assert cache_for(qwen[0]) is be.images
    # The same bytes under another name: a hit; other bytes under the same name: a miss.
    import shutil

    from tiny_models import random_image

    path = tmp_path / "copy.jpg"
    shutil.copy(shots_items[0].image, path)
    item = dataclasses.replace(shots_items[0], image=str(path))
    be._image_features(item, "query")
    assert be.images.misses == len(distinct)
    random_image(path, seed=99)
    be._image_features(item, "query")
    assert be.images.misses == len(distinct) + 1


def test_the_image_cache_is_bounded():
    from lever.eval.image_cache import ImageFeatureCache

    cache = ImageFeatureCache(max_mb=3 * 4 * 1000 / 2**20)  # room for three entries of 1000 floats
    grid = torch.tensor([1, 2, 2])
    for k in range(5):
        cache.put(k, grid, torch.zeros(1000))
    assert len(cache) == 3 and cache.bytes == 12000
    assert cache.get(0) is None and cache.get(4) is not None  # the least recently used went first
    cache.put("big", grid, torch.zeros(4000))  # larger than the whole budget: not kept
    assert cache.get("big") is None and (cache.hits, cache.misses) == (1, 2)
    assert "3 uses, 2 encoded, 33% reused" in cache.summary()


def test_gt_probs_from_the_prefill_equal_teacher_forcing(qwen, shots_items):
    reqs = shot_requests(shots_items)
    plain = backend(qwen, fast=False, batch_size=1).gt_probs(reqs)
    fast = backend(qwen, batch_size=8)
    probs = fast.gt_probs(reqs)
    both_answers, both_probs = fast.answer_with_gt_probs(reqs)
    assert probs == both_probs and [r.raw for r in both_answers] == [r.raw for r in fast.answer(reqs)]
    assert all(p is not None and p > 0 for p in probs)
    # Log-probabilities agree to float precision (the random model gives tiny probabilities).
    assert [math.log(p) for p in probs] == pytest.approx([math.log(p) for p in plain], abs=1e-4)
    no_answers = dataclasses.replace(shots_items[0], answers=[])
    answers, probs = fast.answer_with_gt_probs([Request("val", no_answers)])
    assert probs == [None] and not answers[0].failed  # no ground truth: no probability, still an answer


def test_items_without_images_answer_as_the_plain_path(qwen, items):
    """A text-only prompt after an image prompt: the image prompt's 3D position offsets must not leak into it."""
    bare = [dataclasses.replace(it, image=None) for it in items]
    reqs = [Request("val", bare[0], [bare[1]]), Request("val", items[2], [bare[3]]), Request("val", bare[4])]
    fast = backend(qwen, num_beams=3)
    fast.answer([Request("val", items[0], [items[1]])])  # leaves the model's rope offsets set
    got = fast.answer(reqs)
    assert not any(r.failed for r in got)
    assert [r.raw for r in got] == [r.raw for r in backend(qwen, fast=False, num_beams=3, batch_size=1).answer(reqs)]


def test_an_image_processor_with_unusual_attributes_still_takes_the_fast_path(qwen, items, monkeypatch):
    """Its settings key the image cache; a value JSON cannot hold (a wrapped method, say) must not break it."""
    images = qwen[1].image_processor
    monkeypatch.setattr(images, "preprocess", lambda *a, _real=images.preprocess, **k: _real(*a, **k))
    be = backend(qwen, num_beams=1)
    assert not be.answer([Request("val", items[0])])[0].failed
