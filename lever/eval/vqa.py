"""VQA accuracy, as the official VQA evaluation code (GT-Vision-Lab `vqaEval.py`) defines it.

Each of the 10 human answers in turn is left out, and the prediction scores
min(1, matches among the other 9 / 3); the score is the mean over the 10. Three
variants of what gets normalised before matching (punctuation, number words,
articles, contractions) exist in published code; `vqa_accuracy(metric=...)` names
them, and the plan's `eval.metric` chooses one.

Quirks of the normalisation kept on purpose, because published numbers depend on them:
- the period rule's look-behind is written as a look-ahead `(?!<=\\d)`, so it
  removes every period that is not followed by a digit ("u.s." -> "us");
- `re.UNICODE` lands in `sub`'s `count` slot, so at most 32 periods are removed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher
from functools import lru_cache

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")  # a comma between digits: "1,000"
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit
PERIOD_MAX = 32  # re.UNICODE == 32, passed as `count` in the official code


@lru_cache(maxsize=1 << 16)  # a pure function of a few thousand distinct answers: each question's ten are met again
def process_punctuation(text: str) -> str:
    """The official punctuation step.

    Each mark in PUNCT is deleted when it touches a space somewhere in the text,
    or when the text has a comma between digits; otherwise it becomes a space.
    Then periods not followed by a digit are deleted (decimals like "2.5" stay).
    """
    out = text
    digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCT:
        # Tested on the original text, applied to the running one, as the official code does.
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_MAX)


def process_digit_article(text: str) -> str:
    """The official word step: lower-case, number words to digits, drop articles, contractions."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean(text: str) -> str:
    """Newlines and tabs to spaces, then strip: the step every variant applies first."""
    return text.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 16)
def normalize_answer(s: str) -> str:
    """The full normalisation: clean, punctuation, then number words, articles and contractions."""
    return process_digit_article(process_punctuation(clean(s)))


VQA_METRICS = ("classic", "vqa-latest", "lever-plus")


def vqa_accuracy(pred: str, answers: Sequence[str], metric: str = "classic") -> float:
    """VQA accuracy of one prediction against the human answers, in [0, 1].

    acc = (1/n) * sum_i min(1, #{j != i : answers[j] == pred} / 3), n = 10 for VQA / OK-VQA.

    The variants differ only in what is normalised before comparing (see docs/evaluation.md):
    - classic: the prediction always fully; the answers get the punctuation step only, and only
      when they are not all identical (the reference code most repositories copy);
    - vqa-latest: both fully, but only when the answers are not all identical (so "Yes" scores 0
      against ten "yes"), as the reference repository's latest revision;
    - lever-plus: both fully, always (the metric behind the original project's published numbers).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    if metric == "classic":
        p = normalize_answer(pred)
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    elif metric == "vqa-latest":
        p, gts = clean(pred), [clean(a) for a in answers]
        if len(set(gts)) > 1:
            p, gts = normalize_answer(p), [normalize_answer(a) for a in gts]
    elif metric == "lever-plus":
        p, gts = normalize_answer(pred), [normalize_answer(a) for a in answers]
    else:
        raise ValueError(f"unknown VQA metric {metric!r}; one of {', '.join(VQA_METRICS)}")
    matches = sum(a == p for a in gts)
    # Leaving out annotator i removes one match exactly when annotator i matched.
    scores = [min(1.0, (matches - (a == p)) / 3) for a in gts]
    return sum(scores) / len(scores)


def _tokens(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower())


def token_f1(a: str, b: str) -> float:
    """F1 of the lower-cased alphanumeric tokens of a and b (0 when either has none)."""
    ta, tb = _tokens(a), _tokens(b)
    common = sum((Counter(ta) & Counter(tb)).values())
    if not ta or not tb or not common:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def relevance(pred: str, answers: Sequence[str]) -> dict[str, float]:
    """How close a prediction is to the answers, as the candidate-data fields (the original's definition):

    vqa_rel_token_f1 = max_a token_f1(pred, a); vqa_rel_edit_sim = max_a SequenceMatcher(pred, a).ratio();
    vqa_rel_score = max of the two. Texts are stripped and lower-cased; an empty prediction scores 0.
    """
    p = (pred or "").strip().lower()
    gts = [(a or "").strip().lower() for a in answers]
    if not p or not gts:
        return {"vqa_rel_token_f1": 0.0, "vqa_rel_edit_sim": 0.0, "vqa_rel_score": 0.0}
    f1 = max(token_f1(p, a) for a in gts)
    ed = max(SequenceMatcher(None, p, a).ratio() for a in gts)
    return {"vqa_rel_token_f1": round(f1, 4), "vqa_rel_edit_sim": round(ed, 4), "vqa_rel_score": round(max(f1, ed), 4)}
