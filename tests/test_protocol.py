"""Prompt protocols: the exact chat text each renders, qwen-vl-utils image sizing, protocol files and settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import tiny_qwen  # noqa: E402

from lever.errors import LeverError  # noqa: E402
from lever.eval.backend import Item, Request  # noqa: E402
from lever.eval.hf import HFBackend  # noqa: E402
from lever.eval.protocol import load_protocol, resolve_protocol, smart_resize  # noqa: E402
from lever.spec.schema import EvalSpec  # noqa: E402

# The original project's system prompt, as published in its Qwen2.5-VL config.
ORIGINAL_SYSTEM = (
    "In the upcoming task, you will see four sets of dialogues, each containing two roles: user and assistant. "
    "The user is the questioner, who provides an image and asks a question based on it; the assistant is the "
    "responder, who answers according to the image and question provided by the user. Afterward, you will receive "
    "an image and a question from the user. Please act as the assistant and answer based on the four previous "
    "dialogue sets and your own knowledge. Strictly follow the answering format: if the examples use only one or "
    "two keywords, your reply must also use only one or two keywords; if the examples contain no more than three "
    "tokens, your reply must not exceed three tokens either."
)
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
TURN = (
    f"<|im_start|>user\n{IMG}Question:What is 1? Short answer:ans1{IMG}Question:What is 2? Short answer:ans2"
    f"{IMG}Question:What is 0? Short answer:<|im_end|>\n<|im_start|>assistant\n"
)
GOLDEN = {
    "lever-plus": f"<|im_start|>system\n{ORIGINAL_SYSTEM}<|im_end|>\n" + TURN,
    "lever": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + TURN,
}


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen(seed=0)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_two_shot_prompt_renders_byte_for_byte(qwen, name):
    """Rendered with Qwen2.5-VL-Instruct's released chat template (tests/tiny_models.py)."""
    items = [Item(i, 100 + i, 10 + i, f"What is {i}?", [f"ans{i}"] * 10, image=f"{i}.jpg") for i in range(3)]
    backend = HFBackend.from_pretrained_objects(*qwen, device="cpu", protocol=load_protocol(name))
    assert backend.render(Request("val", items[0], [items[1], items[2]])) == GOLDEN[name]


def _original_text(question: str, answer: str) -> str:
    """A text part as the original builds it: its template "Question:<Q> Short answer:<A>" filled in (openicl's
    PromptTemplate; the query's <A> empty), then `item.strip(" ")` in its Qwen2VLInterface.prepare_input."""
    return "Question:<Q> Short answer:<A>".replace("<Q>", question).replace("<A>", answer).strip(" ")


def test_text_parts_are_stripped_of_spaces_as_the_original_strips_them(qwen):
    """Surrounding spaces in questions and answers: lever-plus sends the original's text parts byte for byte
    (spaces only: a tab stays), `lever` keeps its earlier text."""
    questions, answers = [" What is 0? ", "What is 1? ", " What is 2?"], ["ans0", "ans1 ", "ans2\t "]
    items = [Item(i, 100 + i, 10 + i, questions[i], [answers[i]] * 10, image=f"{i}.jpg") for i in range(3)]
    request = Request("val", items[0], [items[1], items[2]])
    turn = "".join(IMG + _original_text(questions[i], answers[i]) for i in (1, 2)) + IMG + _original_text(questions[0], "")
    assert "Short answer:ans1" + IMG in turn and "Short answer:ans2\t" + IMG in turn  # the hand-worked parts
    plus = HFBackend.from_pretrained_objects(*qwen, device="cpu", protocol=load_protocol("lever-plus"))
    expected = f"<|im_start|>system\n{ORIGINAL_SYSTEM}<|im_end|>\n<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"
    assert plus.render(request).encode() == expected.encode()
    old = HFBackend.from_pretrained_objects(*qwen, device="cpu", protocol=load_protocol("lever"))
    assert "Short answer:ans1 " + IMG in old.render(request)  # lever's protocol: the templates' text as it was
    assert (
        load_protocol("lever-plus").identity()["strip_text"] == "spaces" and "strip_text" not in load_protocol("lever").identity()
    )


def test_default_protocol_is_the_originals():
    proto = resolve_protocol(EvalSpec())
    assert proto.name == "lever-plus" and proto.metric == "lever-plus" and proto.image_sizing == "qwen-vl-utils"
    assert (proto.min_pixels, proto.max_pixels) == (4 * 28 * 28, 16384 * 28 * 28)


@pytest.mark.parametrize(
    "hw,expected",
    [
        ((480, 640), (476, 644)),  # a COCO image: 17 x 23 tokens of 28 px (round 17.14 and 22.86)
        ((10, 10), (56, 56)),  # 28 x 28 < 3136: grow by sqrt(3136 / 100) = 5.6, round up to 56
        ((3000, 5000), (2772, 4620)),  # 2996 x 5012 > 12845056: shrink by 1.0806, round down to 99 and 165 x 28
    ],
)
def test_smart_resize_hand_values(hw, expected):
    assert smart_resize(*hw, min_pixels=3136, max_pixels=12845056) == expected


def test_image_sizing_follows_the_protocol():
    from PIL import Image

    image = Image.new("RGB", (640, 480))
    assert load_protocol("lever-plus").size_image(image).size == (644, 476)
    assert load_protocol("lever").size_image(image).size == (640, 480)  # the processor sizes it
    small = resolve_protocol(EvalSpec(max_pixels=28 * 28 * 64))  # at most 64 visual tokens
    w, h = small.size_image(image).size
    assert w % 28 == h % 28 == 0 and w * h <= 28 * 28 * 64


def test_plan_settings_override_the_protocol():
    assert resolve_protocol(EvalSpec(metric="vqa-latest")).metric == "vqa-latest"
    assert resolve_protocol(EvalSpec(protocol="lever")).metric == "classic"
    with pytest.raises(LeverError, match="eval.max_pixels applies to image_sizing"):
        resolve_protocol(EvalSpec(protocol="lever", max_pixels=1000))
    with pytest.raises(LeverError, match="min_pixels .* is above max_pixels"):
        resolve_protocol(EvalSpec(min_pixels=5000, max_pixels=4000))


def test_protocol_files_are_data_and_errors_name_the_key(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('demo_template = "Q: {question} A: {answer}"\nquery_template = "Q: {question} A:"\nmetric = "vqa-latest"\n')
    proto = load_protocol(str(path))
    assert proto.metric == "vqa-latest" and proto.system_prompt == "" and proto.name == str(path)
    before = proto.identity()
    path.write_text(path.read_text().replace("A:", "Answer:"))
    assert load_protocol(str(path)).identity() != before  # the content, not the name, is what results depend on

    path.write_text('demo_template = "Q: {question}"\nquery_template = "Q: {question} {answer}"\n')
    with pytest.raises(LeverError, match=r"mine.toml: query_template: .*cannot contain \{answer\}"):
        load_protocol(str(path))
    path.write_text('demo_template = "{question}"\nquery_template = "{question}"\nsystem = "x"\n')
    with pytest.raises(LeverError, match="mine.toml: system: unknown key. did you mean 'system_prompt'"):
        load_protocol(str(path))
    with pytest.raises(LeverError, match="neither a shipped protocol nor a protocol file"):
        load_protocol("lever_plus")


def test_a_bad_protocol_fails_before_training(lever, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = Path(__file__).resolve().parents[1] / "plans" / "plan5.toml"
    res = lever("run", plan, "eval.protocol=nosuch", "rce.epochs=1", "grpo.epochs=1")
    assert res.code == 2 and "eval.protocol = 'nosuch'" in res.err and "lever-plus" in res.err
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".lever-cache").exists()  # nothing generated


def test_show_prints_the_effective_protocol(lever):
    plan = Path(__file__).resolve().parents[1] / "plans" / "plan5.toml"
    res = lever("show", plan, "eval.metric=vqa-latest", "eval.max_pixels=200704", "--json")
    assert res.code == 0, res.text
    import json

    proto = json.loads(res.out)["protocol"]
    assert proto["name"] == "lever-plus" and proto["metric"] == "vqa-latest" and proto["max_pixels"] == 200704
    assert proto["system_prompt"] == ORIGINAL_SYSTEM
    assert proto["generation"] == {"length_penalty": 0.0, "min_new_tokens": 0, "eos": "tokenizer", "sampling": "model_config"}
    table = lever("show", plan, "eval.protocol=lever")
    assert table.code == 0, table.text
    rows = {line.split()[1]: line.split()[3] for line in table.out.splitlines() if line.startswith("│ generation.")}
    assert rows == {
        "generation.length_penalty": "null",
        "generation.min_new_tokens": "null",
        "generation.eos": '"config"',
        "generation.sampling": '"greedy"',
    }


@pytest.fixture(scope="module")
def okvqa_items(tmp_path_factory):
    from tiny_models import write_okvqa_fixture

    from lever.eval.okvqa import load_okvqa

    return load_okvqa(*write_okvqa_fixture(tmp_path_factory.mktemp("okvqa"), n=2), split="val")


def _generate_kwargs(qwen, items, name: str, monkeypatch) -> dict:
    """The keyword arguments besides the encoded batch (tensors, the prefilled cache) that reach the model's `generate` when the
    backend answers one 1-shot request under protocol `name`."""
    backend = HFBackend.from_pretrained_objects(*qwen, device="cpu", max_new_tokens=2, protocol=load_protocol(name))
    seen: list[dict] = []
    real = backend.model.generate

    def spy(**kw):
        seen.append({k: v for k, v in kw.items() if not isinstance(v, torch.Tensor) and k != "cache"})  # the prefill
        return real(**kw)

    monkeypatch.setattr(backend.model, "generate", spy)
    (resp,) = backend.answer([Request("val", items[0], [items[1]])])
    assert not resp.failed, resp.error
    (kw,) = seen
    return kw


def test_generate_gets_the_originals_settings_under_lever_plus(qwen, okvqa_items, monkeypatch):
    """The original passed length_penalty 0.0, min_new_tokens 0 and the tokenizer's eos, and left sampling to the
    model folder's generation_config (so no do_sample here)."""
    tokenizer = qwen[1].tokenizer
    kw = _generate_kwargs(qwen, okvqa_items, "lever-plus", monkeypatch)
    assert kw == {
        "max_new_tokens": 2,
        "num_beams": 3,
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "length_penalty": 0.0,
        "min_new_tokens": 0,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }


def test_generate_is_greedy_as_before_under_lever(qwen, okvqa_items, monkeypatch):
    """lever's protocol keeps what lever always passed: no sampling; the rest from the model's generation config."""
    kw = _generate_kwargs(qwen, okvqa_items, "lever", monkeypatch)
    pad = qwen[1].tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert kw == {"max_new_tokens": 2, "num_beams": 3, "pad_token_id": pad, "do_sample": False}


def test_generation_settings_are_data_and_part_of_the_identity(tmp_path):
    plus = load_protocol("lever-plus")
    assert plus.identity()["generation"] == {
        "length_penalty": 0.0,
        "min_new_tokens": 0,
        "eos": "tokenizer",
        "sampling": "model_config",
    }
    # data generate answers as the original's generator: no sampling; the evaluations' identity is unchanged by it
    assert plus.generation.candidate_sampling == "greedy"
    assert plus.for_candidates().identity()["generation"] == {**plus.identity()["generation"], "sampling": "greedy"}
    path = tmp_path / "mine.toml"
    original = (Path(__file__).resolve().parents[1] / "lever" / "eval" / "protocols" / "lever-plus.toml").read_text()
    path.write_text(original.replace("length_penalty = 0.0", "length_penalty = 1.0"))
    mine = load_protocol(str(path))
    assert mine.generation.length_penalty == 1.0 and mine.identity() != plus.identity()
    assert {k: v for k, v in mine.identity().items() if k not in ("name", "generation")} == {
        k: v for k, v in plus.identity().items() if k not in ("name", "generation")
    }
    # A protocol file without a [generation] table generates as lever always did.
    path.write_text('demo_template = "Q: {question} A: {answer}"\nquery_template = "Q: {question} A:"\n')
    assert load_protocol(str(path)).identity()["generation"] == load_protocol("lever").identity()["generation"]
    path.write_text(original.replace('sampling = "model_config"', 'sampling = "sample"'))
    with pytest.raises(LeverError, match=r"mine.toml: generation.sampling: .*'model_config'.*'greedy'"):
        load_protocol(str(path))
