"""VQA accuracy (official definition), post-processing, and the backend helpers."""

from __future__ import annotations

import pytest

from lever.errors import LeverError
from lever.eval.backend import Item, Request, build_prompt_parts, demo_answer
from lever.eval.postprocess import postprocess
from lever.eval.vqa import normalize_answer, process_punctuation, vqa_accuracy

OTHERS = ["dog", "bird", "fish", "cow", "pig", "hen", "owl", "ant", "bee", "elk"]


def answers(k: int, word: str = "cat") -> list[str]:
    """k copies of `word`, then distinct other answers up to 10."""
    return [word] * k + OTHERS[: 10 - k]


# --- accuracy: min(1, matches among the other 9 / 3), averaged over the 10 annotators ---


@pytest.mark.parametrize(
    "k, expected",
    [
        (0, 0.0),  # nobody matches
        # 1 match: that annotator sees 0 others -> 0; the 9 others see 1 -> 1/3 each. (0 + 9/3) / 10 = 0.3
        (1, 0.3),
        # 2 matches: those 2 see 1 -> 1/3; the 8 others see 2 -> 2/3. (2/3 + 16/3) / 10 = 6/10 = 0.6
        (2, 0.6),
        # 3 matches: those 3 see 2 -> 2/3; the 7 others see 3 -> 1. (3 * 2/3 + 7) / 10 = 9/10 = 0.9
        (3, 0.9),
        # 4 matches: those 4 see 3 -> 1; the 6 others see 4 -> min(1, 4/3) = 1. 10/10 = 1.0
        (4, 1.0),
        (10, 1.0),  # everyone sees 9 -> 1
    ],
)
def test_accuracy_counts(k, expected):
    assert vqa_accuracy("cat", answers(k)) == pytest.approx(expected)


def test_accuracy_is_a_fraction_of_one_and_needs_answers():
    assert 0.0 <= vqa_accuracy("anything", OTHERS) <= 1.0
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


# --- normalisation of the prediction ---


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Two", "2"),  # number words to digits, after lower-casing
        ("none", "0"),
        ("  Ten\t", "10"),  # tabs/newlines become spaces, then strip
        ("the dog", "dog"),  # articles dropped
        ("A Dog.", "dog"),  # article + final period
        ("an apple", "apple"),
        ("dont", "don't"),  # contraction table
        ("isnt", "isn't"),
        ("1,000", "1000"),  # a comma between digits: every mark in the text is deleted
        ("yes,no", "yes no"),  # a comma touching no space becomes a space
        ("hot-dog", "hot dog"),
        ("hot - dog", "hot dog"),  # a mark touching a space is deleted; split() drops the double space
        ("2.5", "2.5"),  # a period followed by a digit stays (decimal)
        ("u.s.a.", "usa"),  # every other period goes
        ("what?!", "what"),  # "?" and "!" become spaces at the end, then split() drops them
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_period_rule_stops_after_32():
    # re.UNICODE (= 32) sits in sub's `count` slot in the official code: 40 periods -> 8 left.
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"


def test_prediction_is_normalised_before_matching():
    # "Two dogs" -> "2 dogs", which 3 annotators gave: (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("Two dogs", answers(3, "2 dogs")) == pytest.approx(0.9)
    # Upper case and a trailing period on the prediction don't matter.
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0


# --- the quirk: human answers are punctuation-processed only when not all identical ---


def test_identical_human_answers_are_not_processed():
    # All 10 say "hot-dog": they stay "hot-dog", while the prediction becomes "hot dog" -> 0.
    assert vqa_accuracy("hot-dog", ["hot-dog"] * 10) == 0.0


def test_differing_human_answers_are_punctuation_processed():
    # 9 x "hot-dog" -> "hot dog" (they differ from "sausage"), prediction "hot dog":
    # the 9 matching annotators see 8 -> 1, the other sees 9 -> 1. Mean 1.0.
    assert vqa_accuracy("hot-dog", ["hot-dog"] * 9 + ["sausage"]) == 1.0


def test_human_answers_get_no_digit_step():
    # The official code runs only the punctuation step on the human answers: "two" stays
    # "two" while the prediction "two" becomes "2", so nothing matches.
    assert vqa_accuracy("two", answers(3, "two")) == 0.0


# --- post-processing of the generated text ---


@pytest.mark.parametrize(
    "raw, out",
    [
        ("paris Question: what", "paris"),
        (" blue Answer:red", "blue"),
        ("dog Short answer: cat", "dog"),
        ("red, white and blue", "red"),  # cut at the first ", "
        ("1,000 people", "1,000 people"),  # a comma without a space does not cut
        ("  \n tennis  ", "tennis"),
        ("a question", "a question"),  # the cut words are case-sensitive
        ("Question: nothing first", ""),
        ("", ""),
    ],
)
def test_postprocess(raw, out):
    assert postprocess(raw) == out


# --- backend helpers ---


def item(i: int, image: str | None = "img.jpg", ans: list[str] | None = None) -> Item:
    return Item(index=i, question_id=100 + i, image_id=200 + i, question=f"q{i}?", answers=ans or [f"a{i}"] * 10, image=image)


def test_demo_answer_most_frequent_first_seen_on_ties():
    assert demo_answer(item(0, ans=["x", "y", "y"])) == "y"
    assert demo_answer(item(0, ans=["b", "a", "a", "b", "c"])) == "b"  # a and b tie at 2: b came first
    with pytest.raises(LeverError):
        demo_answer(Item(0, 1, 2, "q?", []))


def test_prompt_parts_alternate_images_and_texts():
    req = Request("val", query=item(9, image="q.jpg"), demos=[item(1, image="d1.jpg"), item(2, image=None, ans=["two"] * 10)])
    assert build_prompt_parts(req) == [
        {"type": "image", "image": "d1.jpg"},
        {"type": "text", "text": "Question:q1? Short answer:a1"},
        {"type": "text", "text": "Question:q2? Short answer:two"},  # no image: text only
        {"type": "image", "image": "q.jpg"},
        {"type": "text", "text": "Question:q9? Short answer:"},
    ]


def test_zero_shot_prompt_is_the_query_alone():
    assert build_prompt_parts(Request("val", item(3))) == [
        {"type": "image", "image": "img.jpg"},
        {"type": "text", "text": "Question:q3? Short answer:"},
    ]


def test_item_from_record():
    rec = {"index": 4, "question_id": "7", "image_id": 8, "question": "why?", "answers": ["a", "b"]}
    assert Item.from_record(rec) == Item(4, 7, 8, "why?", ["a", "b"], None)
    assert Item.from_record({**rec, "image": "x.jpg"}).image == "x.jpg"
    with pytest.raises(LeverError, match="'answers'"):
        Item.from_record({k: v for k, v in rec.items() if k != "answers"})


# Cases where the three published variants disagree, worked by hand (10 answers each).
@pytest.mark.parametrize(
    "pred,answers,classic,latest,leverplus",
    [
        # Identical answers: vqa-latest normalises nothing, so case matters; the others lower-case the prediction.
        ("Yes", ["yes"] * 10, 1.0, 0.0, 1.0),
        # Identical answers with an article: only lever-plus drops it from the answers too.
        ("dog", ["the dog"] * 10, 0.0, 0.0, 1.0),
        # Differing answers: classic gives them punctuation only ("the dog" stays), the others drop the article:
        # 3 matches -> 3 annotators at 2/3, 7 at 1 -> (2 + 7) / 10.
        ("dog", ["the dog"] * 3 + ["cat"] * 7, 0.0, 0.9, 0.9),
        # Number words: classic maps the prediction only ("two" -> "2", matching 2 of 10: (2*1/3 + 8*2/3)/10);
        # the others map the answers as well (10 matches).
        ("two", ["2"] * 2 + ["two"] * 8, 0.6, 1.0, 1.0),
    ],
)
def test_metric_variants_differ_where_published_code_does(pred, answers, classic, latest, leverplus):
    assert vqa_accuracy(pred, answers, "classic") == pytest.approx(classic)
    assert vqa_accuracy(pred, answers, "vqa-latest") == pytest.approx(latest)
    assert vqa_accuracy(pred, answers, "lever-plus") == pytest.approx(leverplus)


def test_metric_variants_agree_on_plain_answers():
    answers = ["red"] * 4 + ["blue"] * 6
    for metric in ("classic", "vqa-latest", "lever-plus"):
        assert vqa_accuracy("red", answers, metric) == pytest.approx(1.0)  # 4 matches: 4 at 1, 6 at 1
        assert vqa_accuracy("green", answers, metric) == 0.0
    with pytest.raises(ValueError, match="unknown VQA metric"):
        vqa_accuracy("red", answers, "official")


def test_a_repeated_answer_is_judged_against_each_questions_own_answers():
    """score_requests judges each distinct (answer, human answers) once: the same text scores by the question it
    answers, and a failed answer scores 0 whatever it said."""
    from lever.eval.backend import Response
    from lever.eval.score import score_requests

    class Fixed:
        name = "fixed"

        def answer(self, requests):
            return [Response("Cats, dogs", failed=r.query.index == 2) for r in requests]

    cats, dogs = Item(0, 10, 1, "q?", ["cats"] * 10), Item(1, 11, 1, "q?", ["dogs"] * 10)
    failed = Item(2, 12, 1, "q?", ["cats"] * 10)
    reqs = [Request("train", q, []) for q in (cats, dogs, cats, failed)]
    recs = score_requests(Fixed(), "classic", reqs, gt_probs=False, rel=False)
    assert [(r["vqa_pred_answer"], r["vqa_acc_score"]) for r in recs] == [("Cats", 1.0), ("Cats", 0.0), ("Cats", 1.0), ("", 0.0)]
    assert recs[0] == recs[2] and recs[0] is not recs[2]
