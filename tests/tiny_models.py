"""Tiny random models built in code (no download): a Qwen2.5-VL, a CLIP, a byte-level tokenizer,
and a small OK-VQA-format fixture with generated images.

The model builders need transformers (imported inside them, so the OK-VQA fixture
works with pillow alone); call them only after `pytest.importorskip("transformers")`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

QUESTIONS = [
    "What sport can you use this for?",
    "What is the man holding?",
    "Which country is this in?",
    "What season is it?",
    "What is this animal called?",
    "What brand is shown?",
    "How many wheels does it have?",
    "What is the food on the plate?",
]

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2.5-VL-Instruct's released chat template (its video branch and vision ids kept).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEN_PROMPT = "<|im_end|>\n<|im_start|>assistant\n"  # what a rendered prompt ends with


def byte_tokenizer(
    specials: list[str],
    *,
    eos: str,
    pad: str,
    bos: str | None = None,
    wrap: bool = False,
    corpus: list[str] = (),
    vocab_size: int = 512,
    model_max_length: int = 512,
) -> Any:
    """Byte-level BPE tokenizer: the special tokens (ids 0..), the 256 byte symbols, and merges
    learnt in code from `corpus` (none when it is empty), so prompts get realistic token counts.

    wrap=True adds `bos ... eos` around every text (what CLIP's text tower expects).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=ByteLevel.alphabet(), special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(list(corpus) or [""], trainer=trainer)  # deterministic for a given corpus
    if wrap:
        ids = {s: tok.token_to_id(s) for s in (bos, eos)}
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", special_tokens=list(ids.items()))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos, model_max_length=model_max_length
    )


@cache
def image_only_qwen_processor_class() -> type:
    """Qwen2.5-VL's processor without its video processor (which needs torchvision in transformers 5)."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwenProcessor


def tiny_qwen(seed: int = 0, layers: int = 2, init: float = 0.5) -> tuple[Any, Any]:
    """(model, processor): a random Qwen2.5-VL (hidden 32, `layers` text layers, 1 vision block).

    Every image becomes 4 tokens. init = 0.5 (not 0.02) so that the random model's
    output depends on its input, which makes the batching test meaningful.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    corpus = [f"Question:{q} Short answer:" for q in QUESTIONS] + ["system You are a helpful assistant. user assistant"]
    tok = byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", corpus=corpus)
    sid = dict(zip(QWEN_SPECIALS, tok.convert_tokens_to_ids(QWEN_SPECIALS)))
    # 56x56 pixels = 4x4 patches of 14, merged 2x2 -> 4 image tokens per image.
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    processor = image_only_qwen_processor_class()(image_processor=images, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            initializer_range=init,
            # head_dim 16 -> 8 rotary frequencies, split over (time, height, width)
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=sid["<|endoftext|>"],
            eos_token_id=sid["<|im_end|>"],
            pad_token_id=sid["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[0],
        ),
        image_token_id=sid["<|image_pad|>"],
        video_token_id=sid["<|video_pad|>"],
        vision_start_token_id=sid["<|vision_start|>"],
        vision_end_token_id=sid["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), processor


def tiny_clip(seed: int = 0, projection_dim: int = 16) -> tuple[Any, Any]:
    """(model, processor): a random CLIP (hidden 32, 1 layer per tower, 32x32 images, patch 8)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tok = byte_tokenizer(
        ["<|endoftext|>", "<|startoftext|>"],
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        bos="<|startoftext|>",
        wrap=True,
        corpus=QUESTIONS,
        model_max_length=77,
    )
    eos, bos = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftext|>"])
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=images, tokenizer=tok)


def random_image(path: Path, seed: int, size: tuple[int, int] = (48, 64)) -> None:
    """Write a random RGB JPEG of `size` (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def write_okvqa_fixture(
    root: Path, n: int = 6, split: str = "val2014", skip_images: tuple[int, ...] = ()
) -> tuple[Path, Path, Path]:
    """Official-format OK-VQA files for n questions, written in shuffled order, plus COCO-named images.

    Question i has question_id 1000 + 7*i, image_id 500 + i and 10 answers (5 distinct,
    each twice, as in OK-VQA; the most frequent first seen is f"ans{i}"). The images of
    the questions in skip_images are not written.
    Returns (questions path, annotations path, image folder).
    """
    root.mkdir(parents=True, exist_ok=True)
    image_dir = root / "images"
    image_dir.mkdir(exist_ok=True)
    order = list(range(n))[::-1]  # written newest first: the reader must sort
    questions, annotations = [], []
    for i in order:
        qid, image_id = 1000 + 7 * i, 500 + i
        questions.append({"image_id": image_id, "question": QUESTIONS[i % len(QUESTIONS)], "question_id": qid})
        words = [f"ans{i}", f"alt{i}", "other", "thing", "stuff"]
        answers = [
            {"answer": w, "answer_id": k + 1, "raw_answer": w, "answer_confidence": "yes"} for k, w in enumerate(words * 2)
        ]
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "answers": answers,
                "question_type": "other",
                "answer_type": "other",
                "confidence": 3,
            }
        )
        if i not in skip_images:
            random_image(image_dir / f"COCO_{split}_{image_id:012d}.jpg", seed=i)
    qpath, apath = root / f"OpenEnded_mscoco_{split}_questions.json", root / f"mscoco_{split}_annotations.json"
    qpath.write_text(json.dumps({"questions": questions, "license": {}, "data_subtype": split}))
    apath.write_text(json.dumps({"annotations": annotations, "license": {}, "data_subtype": split}))
    return qpath, apath, image_dir


def okvqa_candidates(train_ids: list[int], pool: int = 8) -> dict:
    """A small candidate-data file: every train item is a query with a `pool`-item pool and 5 scored 2-shot sequences."""
    g = torch.Generator().manual_seed(0)
    out: dict = {"_meta": {"created_at": "test"}}
    for q in range(len(train_ids)):
        others = [i for i in torch.randperm(len(train_ids), generator=g).tolist() if i != q][:pool]
        cands, seen = [], set()
        while len(cands) < 5:
            ptr = torch.randperm(pool, generator=g)[:2].tolist()
            if frozenset(ptr) in seen:
                continue
            seen.add(frozenset(ptr))
            acc = [0.0, 0.3, 0.6, 1.0][int(torch.randint(4, (1,), generator=g))]
            cands.append(
                {
                    "pointer": ptr,
                    "pointer_global": [others[p] for p in ptr],
                    "gen_method": "random",
                    "vqa_pred_answer": "x",
                    "vqa_correct": int(acc > 0),
                    "vqa_acc_score": acc,
                    "vqa_gt_prob": 0.5,
                    "vqa_rel_score": 0.5,
                    "vqa_eval_mode": "vqaEval",
                    "eval_failed": False,
                }
            )
        out[str(q)] = {
            "query": {"query_id": q, "question_id": train_ids[q]},
            "candidate_pool_ids": others,
            "pointer_candidates": cands,
        }
    return out


def save_workspace_models(root: Path, clip_pair: tuple, qwen_pair: tuple) -> None:
    """root/clip (config, processor and weights: the preflight re-embeds a few train rows) and root/vlm (config
    and processor), as a workspace's [models] names them."""
    save_model_dir(root / "clip", *clip_pair)
    clip_pair[0].save_pretrained(root / "clip")
    save_model_dir(root / "vlm", *qwen_pair)


def save_model_dir(path: Path, model: Any, processor: Any) -> Path:
    """A model folder as a user has it, without the weights: config.json and the processor files.

    A Qwen2.5-VL folder names the real Qwen2_5_VLProcessor and has a video processor config, as
    the released checkpoint does (loading it needs torchvision, like the real one).
    """
    model.config.save_pretrained(path)
    processor.save_pretrained(path)
    proc_file = path / "processor_config.json"
    if type(model).__name__.startswith("Qwen2_5_VL") and proc_file.is_file():
        cfg = json.loads(proc_file.read_text())
        cfg["processor_class"] = "Qwen2_5_VLProcessor"
        proc_file.write_text(json.dumps(cfg))
        video = {k: v for k, v in cfg["image_processor"].items() if k != "image_processor_type"}
        (path / "video_preprocessor_config.json").write_text(
            json.dumps({**video, "video_processor_type": "Qwen2VLVideoProcessor"})
        )
    return path


def write_okvqa_workspace(root: Path, n_train: int = 30, n_val: int = 6, pool: int = 8) -> tuple[Path, Any, Any]:
    """A real-path workspace on disk: OK-VQA files (val question 3 without its image), CLIP features of the
    train questions, candidate data, and model folders with the tiny models' configs and processors.

    Returns (the lever.toml path, (CLIP model, processor), (Qwen model, processor)).
    """
    from lever.eval.clip import clip_features
    from lever.eval.okvqa import load_okvqa

    tq, ta, ti = write_okvqa_fixture(root / "okvqa_train", n=n_train, split="train2014")
    vq, va, vi = write_okvqa_fixture(root / "okvqa_val", n=n_val, split="val2014", skip_images=(3,))
    clip_pair, qwen_pair = tiny_clip(), tiny_qwen()
    train_items = load_okvqa(tq, ta, ti, "train", None)
    torch.save(clip_features(train_items, clip_pair), root / "query_embeddings.pt")
    (root / "rl_data.json").write_text(json.dumps(okvqa_candidates([it.question_id for it in train_items], pool)))
    save_workspace_models(root, clip_pair, qwen_pair)
    ws = root / "lever.toml"
    ws.write_text(f"""runs = "runs"
cache = "cache"
backend = "hf"
[candidates]
main = "rl_data.json"
[features]
main = "query_embeddings.pt"
[okvqa]
train_questions = "{tq}"
train_annotations = "{ta}"
train_images = "{ti}"
val_questions = "{vq}"
val_annotations = "{va}"
val_images = "{vi}"
[models]
vlm = "vlm"
clip = "clip"
""")
    return ws, clip_pair, qwen_pair


# VQAv2-format fixture: (question, question_type, answer_type, ten human answers). The first three are
# hand-made for the metric tests (tests/test_datasets.py works their scores out by hand); the rest are generic.
VQAV2_QUESTIONS = [
    ("Is there a dog in the picture?", "is there a", "yes/no", ["yes"] * 10),
    ("How many wheels does it have?", "how many", "number", ["2", "2", "two"] + ["3"] * 7),
    ("What color is the bus?", "what color is the", "other", ["red"] + ["blue"] * 9),
]


def vqav2_answers(i: int) -> tuple[str, str, str, list[str]]:
    """Question i of the VQAv2 fixture: (question, question_type, answer_type, ten answers)."""
    if i < len(VQAV2_QUESTIONS):
        return VQAV2_QUESTIONS[i]
    return (QUESTIONS[i % len(QUESTIONS)], "what is the", "other", [f"ans{i}"] * 4 + [f"alt{i}"] * 3 + ["other"] * 3)


def write_vqav2_fixture(root: Path, n: int = 6, split: str = "val2014") -> tuple[Path, Path, Path]:
    """Official-format VQAv2 files for n questions (written newest first), plus COCO-named images.

    Question i: image_id 9000 + i, question_id (9000 + i) * 1000 + 1 (VQAv2 numbers a question by its image
    and its position on it), ten answers with answer_id 1..10 and answer_confidence, the annotation's
    answer_type, question_type and multiple_choice_answer (the most frequent answer), as VQAv2 ships them.
    Returns (questions path, annotations path, image folder).
    """
    from collections import Counter

    root.mkdir(parents=True, exist_ok=True)
    image_dir = root / "images"
    image_dir.mkdir(exist_ok=True)
    questions, annotations = [], []
    for i in reversed(range(n)):
        image_id = 9000 + i
        qid = image_id * 1000 + 1
        question, qtype, atype, answers = vqav2_answers(i)
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
                "answers": [
                    {"answer": a, "answer_confidence": ("yes", "maybe", "no")[k % 3], "answer_id": k + 1}
                    for k, a in enumerate(answers)
                ],
                "image_id": image_id,
                "answer_type": atype,
                "question_id": qid,
            }
        )
        random_image(image_dir / f"COCO_{split}_{image_id:012d}.jpg", seed=100 + i)
    info = {"info": {}, "license": {}, "data_subtype": split, "data_type": "mscoco"}
    qpath = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    apath = root / f"v2_mscoco_{split}_annotations.json"
    qpath.write_text(json.dumps({**info, "task_type": "Open-Ended", "questions": questions}))
    apath.write_text(json.dumps({**info, "annotations": annotations}))
    return qpath, apath, image_dir


def write_parquet_copy(
    questions: Path, annotations: Path, image_dir: Path, out: Path, split: str, shards: int = 2, answers: str = "dicts"
) -> list[Path]:
    """The VQA JSON files of a split (and their COCO-named images) as parquet files in the Hugging Face layout
    lmms-eval evaluates on: one row per question with the image as {"bytes", "path"}, question_id, question,
    answers (`answers = "dicts"`: [{"answer", "answer_confidence", "answer_id"}] as VQAv2's copy; "strings": the
    answer texts, as OK-VQA's), answer_type, question_type, image_id; rows in the JSON file's order, cut into
    `shards` files. The image bytes are the image files', byte for byte. Returns the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lever.eval.okvqa import coco_image_name

    qs = json.loads(Path(questions).read_text())["questions"]
    anns = {a["question_id"]: a for a in json.loads(Path(annotations).read_text())["annotations"]}
    rows = []
    for q in qs:
        a = anns[q["question_id"]]
        name = coco_image_name(q["image_id"], split)
        given = a["answers"] if answers == "dicts" else [x["answer"] for x in a["answers"]]
        rows.append(
            {
                "question_type": a.get("question_type"), "answers": given, "answer_type": a.get("answer_type"),
                "image_id": q["image_id"], "question_id": q["question_id"], "question": q["question"],
                "image": {"bytes": (Path(image_dir) / name).read_bytes(), "path": name},
            }
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // shards)
    files = []
    for s in range(shards):
        files.append(out / f"{split}-{s:05d}-of-{shards:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows[s * size : (s + 1) * size]), files[-1])
    return files
