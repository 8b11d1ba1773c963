"""The small interface every answering backend implements, and the prompt layout.

A backend takes requests (a query plus its ordered demonstrations) and returns one
raw generated text per request. Post-processing and scoring happen elsewhere
(`lever.eval.postprocess`, `lever.eval.vqa`), so all backends are scored alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from lever.errors import LeverError

_RECORD_KEYS = ("index", "question_id", "image_id", "question", "answers")


@dataclass
class Item:
    """One VQA question: `index` is its row in its split (and in the features)."""

    index: int
    question_id: int
    image_id: int
    question: str
    answers: list[str]
    image: str | None = None  # path of the image file, if any
    answer_type: str | None = None  # the dataset's answer type (VQAv2: yes/no, number, other), where it has one
    question_type: str | None = None  # the dataset's question type (VQAv2: "what color is the", ...), where it has one

    def types(self) -> dict[str, str]:
        """The item's answer and question type as a results row keeps them (only those the dataset has)."""
        return {k: v for k, v in (("answer_type", self.answer_type), ("question_type", self.question_type)) if v is not None}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Item:
        """Build from {"index","question_id","image_id","question","answers", optional "image", "answer_type",
        "question_type"}."""
        missing = [k for k in _RECORD_KEYS if k not in rec]
        if missing:
            raise LeverError(
                f"item record is missing {', '.join(map(repr, missing))}: {rec!r:.200}",
                hint=f"an item record needs the keys {', '.join(_RECORD_KEYS)} (and may have 'image')",
            )
        image = rec.get("image")
        return cls(
            index=int(rec["index"]),
            question_id=int(rec["question_id"]),
            image_id=int(rec["image_id"]),
            question=str(rec["question"]),
            answers=[str(a) for a in rec["answers"]],
            image=None if image is None else str(image),
            answer_type=_optional_str(rec.get("answer_type")),
            question_type=_optional_str(rec.get("question_type")),
        )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class Request:
    """Answer `query` with `demos` (in this order) in the prompt; `split` names the query's split."""

    split: str
    query: Item
    demos: list[Item] = field(default_factory=list)


@dataclass
class Response:
    """The raw generated text; a failed question has failed=True and an error message."""

    raw: str
    failed: bool = False
    error: str | None = None


class Backend(Protocol):
    """Answers a list of requests; one failing question gives a failed Response, not an exception."""

    name: str

    def answer(self, requests: list[Request]) -> list[Response]: ...


def demo_answer(item: Item) -> str:
    """The most frequent human answer; ties go to the one seen first."""
    if not item.answers:
        raise LeverError(
            f"question {item.question_id} has no human answers, so it cannot be a demonstration",
            hint="every item used as a demonstration needs at least one answer",
        )
    # most_common keeps first-seen order among equal counts.
    return Counter(item.answers).most_common(1)[0][0]


def _image_part(item: Item) -> list[dict[str, Any]]:
    return [] if item.image is None else [{"type": "image", "image": item.image}]


DEMO_TEMPLATE = "Question:{question} Short answer:{answer}"
QUERY_TEMPLATE = "Question:{question} Short answer:"


def build_prompt_parts(
    request: Request, demo_template: str = DEMO_TEMPLATE, query_template: str = QUERY_TEMPLATE, strip: str | None = None
) -> list[dict[str, Any]]:
    """The content of one user message: image, text, image, text, ... (docs/evaluation.md).

    Each demo gives its image then `Question:<q> Short answer:<a>` (a = demo_answer);
    the query gives its image then `Question:<q> Short answer:`. An item without an
    image gives only its text. The templates come from the prompt protocol. `strip`: characters
    stripped from both ends of each text part, an empty one left out (the original: `text.strip(" ")`).
    """
    parts: list[dict[str, Any]] = []

    def text(t: str) -> None:
        t = t if strip is None else t.strip(strip)
        if t or strip is None:
            parts.append({"type": "text", "text": t})

    for demo in request.demos:
        parts += _image_part(demo)
        text(demo_template.format(question=demo.question, answer=demo_answer(demo)))
    parts += _image_part(request.query)
    text(query_template.format(question=request.query.question))
    return parts
