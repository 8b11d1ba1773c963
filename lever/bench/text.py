"""Words of the simulated world: answer types, their vocabularies, question templates, and two text scores.

Answers are already in normal form (lower case, no articles or punctuation, digits for numbers),
so the simple exact-match VQA accuracy below agrees with the official normalising one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

# answer type -> (answer vocabulary, question templates)
ANSWER_TYPES: dict[str, tuple[list[str], list[str]]] = {
    "sport": (
        [
            "tennis",
            "baseball",
            "soccer",
            "surfing",
            "skiing",
            "skateboarding",
            "frisbee",
            "snowboarding",
            "racing",
            "golf",
            "kite flying",
            "swimming",
        ],
        ["What sport is being played?", "What sport can you use this for?", "Which sport is this player known for?"],
    ),
    "animal": (
        ["dog", "cat", "horse", "giraffe", "elephant", "zebra", "bear", "sheep", "cow", "bird", "duck", "lion"],
        ["What animal is shown?", "What kind of animal lives here?", "Which animal is this?"],
    ),
    "food": (
        ["pizza", "sandwich", "cake", "banana", "donut", "broccoli", "hot dog", "salad", "pasta", "apple", "orange", "bread"],
        ["What food is on the plate?", "What is this dish called?", "What food is sold here?"],
    ),
    "color": (
        ["red", "blue", "green", "white", "black", "yellow", "brown", "pink", "gray", "silver", "purple", "tan"],
        ["What color is the vehicle?", "What color is this usually?", "What color are the walls?"],
    ),
    "place": (
        [
            "kitchen",
            "bathroom",
            "beach",
            "park",
            "airport",
            "street",
            "office",
            "farm",
            "zoo",
            "restaurant",
            "train station",
            "living room",
        ],
        ["Where was this picture taken?", "What room is this?", "What kind of place is this?"],
    ),
    "vehicle": (
        ["bus", "train", "truck", "motorcycle", "bicycle", "airplane", "boat", "car", "tractor", "scooter", "van", "jet"],
        ["What vehicle is this?", "What kind of transport is shown?", "What could you ride here?"],
    ),
    "number": (
        ["2", "3", "4", "5", "6", "10", "12", "20", "100", "1950", "1990", "2000"],
        ["How many people can ride this?", "What year was this invented?", "How many wheels does this have?"],
    ),
    "material": (
        ["wood", "metal", "plastic", "glass", "stone", "leather", "cotton", "paper", "steel", "brick", "ceramic", "rubber"],
        ["What is this made of?", "What material is the table?", "What are these walls made of?"],
    ),
}


def vocabulary() -> list[str]:
    """All answer words, then their plurals (the near-miss wrong answers); a word's id is its list index."""
    words = [w for vocab, _ in ANSWER_TYPES.values() for w in vocab]
    return list(dict.fromkeys(words + [near_miss(w) for w in words]))  # unique, order kept


def answer_type(question: str) -> str | None:
    """The answer type of a simulated question (sport, animal, ..., number): each question template belongs to one
    type, so the stored question text names it (None for a text no template makes)."""
    return _TYPE_OF_QUESTION.get(question)


_TYPE_OF_QUESTION = {q: t for t, (_, templates) in ANSWER_TYPES.items() for q in templates}


def near_miss(word: str) -> str:
    """A wrong answer that looks like `word`: its plural, or the next number."""
    if word.isdigit():
        return str(int(word) + 1)
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    return word + "s"


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """VQA accuracy of `pred` against the human answers (exact match on normalised strings).

    acc = 1/n * sum_i min(1, #{j != i : answers[j] == pred} / 3)     (n = 10 annotators)
    """
    n = len(answers)
    matches = sum(a == pred for a in answers)
    total = 0.0
    for a in answers:
        others = matches - (a == pred)  # leave annotator i out
        total += min(1.0, others / 3)
    return total / n


def text_similarity(pred: str, answers: Sequence[str]) -> float:
    """Best character-bigram Dice similarity between `pred` and any answer, in [0, 1].

    dice(a, b) = 2 |B(a) & B(b)| / (|B(a)| + |B(b)|), B = set of character bigrams of " a "
    """
    return max(_dice(pred, a) for a in answers)


def _dice(a: str, b: str) -> float:
    if a == b:
        return 1.0
    ba, bb = _bigrams(a), _bigrams(b)
    return 2 * len(ba & bb) / (len(ba) + len(bb))


@lru_cache(maxsize=4096)  # few distinct strings: the vocabulary
def _bigrams(s: str) -> frozenset[str]:
    s = f" {s} "
    return frozenset(s[i : i + 2] for i in range(len(s) - 1))


def question_embedding(questions: Sequence[str], dim: int) -> torch.Tensor:
    """A model-free text embedding of each question, [n, dim]: the normalised sum of one fixed random unit vector
    per lower-cased word (seeded by the word), so questions sharing words lie closer. The world has no text
    encoder; this stands in for CLIP's question embedding (`selector.features = "question"`)."""
    vecs: dict[str, torch.Tensor] = {}
    out = torch.zeros(len(questions), dim)
    for i, text in enumerate(questions):
        for word in text.lower().replace("?", " ").split():
            if word not in vecs:
                g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                vecs[word] = F.normalize(torch.randn(dim, generator=g), dim=0)
            out[i] += vecs[word]
    return F.normalize(out, dim=-1)
