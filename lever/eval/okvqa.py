"""Reader for datasets in the VQA format (OK-VQA, VQAv2): questions JSON, annotations JSON, COCO image folder.

questions:   {"questions": [{"image_id", "question", "question_id"}, ...]}
annotations: {"annotations": [{"question_id", "image_id", "answers": [{"answer", ...}], ...}, ...]}
images:      COCO_<split>2014_<image_id:012d>.jpg, in the folder or in its <split>2014/ subfolder.

OK-VQA and VQAv2 share this layout (both ten human answers per question). An annotation's `answer_type`
and `question_type` (VQAv2: yes/no, number, other; OK-VQA: "other" and its own question categories) are
kept on the item, so results rows carry them and accuracy can be broken down by them; scoring does not
read them (nor `multiple_choice_answer`): the VQA accuracy uses the ten answers alone. `load_vqa` is the generic name; `load_okvqa` the historic one.

Items come sorted by question_id, cut to `limit`, with `index` = position after sorting.
A missing image file is not an error here: that question fails at answer time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lever.errors import LeverError
from lever.eval.backend import Item
from lever.io import read_text

_SPLITS = {"train": "train2014", "val": "val2014", "train2014": "train2014", "val2014": "val2014"}


def _read_json(path: Path, key: str) -> list[dict[str, Any]]:
    """Read an OK-VQA JSON file and return its list under `key`."""
    if not path.is_file():
        raise LeverError(
            f"VQA-format file {path} does not exist", hint="download the dataset's official questions/annotations JSON files"
        )
    try:
        data = json.loads(read_text(path, "VQA-format file"))
    except json.JSONDecodeError as e:
        raise LeverError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
            hint="re-download the file; it may be truncated",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise LeverError(
            f"{path} has no list under the key {key!r}", hint=f'expected the official VQA-format shape {{"{key}": [...]}}'
        )
    return data[key]


def question_count(path: Path) -> int:
    """How many questions a VQA-format questions file holds."""
    return len(_read_json(Path(path), "questions"))


def coco_image_name(image_id: int, split: str) -> str:
    """COCO file name of an image, e.g. (297147, "val") -> COCO_val2014_000000297147.jpg."""
    return f"COCO_{_SPLITS[split]}_{image_id:012d}.jpg"


def _image_path(image_dir: Path, image_id: int, split: str) -> str:
    name = coco_image_name(image_id, split)
    for p in (image_dir / name, image_dir / _SPLITS[split] / name):
        if p.is_file():
            return str(p)
    return str(image_dir / name)  # missing: the backend marks this question failed


def load_okvqa(
    questions_path: str | Path, annotations_path: str | Path, image_dir: str | Path | None, split: str, limit: int | None = None
) -> list[Item]:
    """Load VQA-format questions (OK-VQA, VQAv2) with their 10 human answers, sorted by question_id, first `limit`.

    `split` is "train"/"val" (or "train2014"/"val2014") and picks the COCO file names.
    `image_dir` None gives items without images.
    """
    if split not in _SPLITS:
        raise LeverError(f"VQA split {split!r} is not known", hint=f"use one of {', '.join(_SPLITS)}")
    if limit is not None and limit < 1:
        raise LeverError(f"limit = {limit} is not valid", hint="limit must be >= 1, or unset for all questions")
    questions_path, annotations_path = Path(questions_path), Path(annotations_path)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise LeverError(f"image folder {image_dir} does not exist", hint=f"point it at the COCO {_SPLITS[split]} image folder")
    questions = _read_json(questions_path, "questions")
    annotations = _read_json(annotations_path, "annotations")
    answers: dict[int, list[str]] = {}
    types: dict[int, dict[str, str]] = {}  # answer_type / question_type, where the annotations hold them
    for i, a in enumerate(annotations):
        try:
            answers[int(a["question_id"])] = [str(x["answer"]) for x in a["answers"]]
            types[int(a["question_id"])] = {k: str(a[k]) for k in TYPE_FIELDS if a.get(k) is not None}
        except (KeyError, TypeError, ValueError) as e:
            raise LeverError(
                f"{annotations_path}: annotation #{i} is malformed ({type(e).__name__}: {e})",
                hint='each annotation needs question_id and answers: [{"answer": ...}, ...]',
            ) from None
    parsed = []
    for i, q in enumerate(questions):
        try:
            parsed.append((int(q["question_id"]), int(q["image_id"]), str(q["question"])))
        except (KeyError, TypeError, ValueError) as e:
            raise LeverError(
                f"{questions_path}: question #{i} is malformed ({type(e).__name__}: {e})",
                hint="each question needs question_id, image_id and question",
            ) from None
    parsed.sort()  # by question_id, as the evaluation protocol says
    if limit is not None:
        parsed = parsed[:limit]
    rows = []
    for qid, image_id, question in parsed:
        if not answers.get(qid):
            raise LeverError(
                f"question {qid} in {questions_path} has no annotation (or no answers) in {annotations_path}",
                hint="use the annotations file of the same split as the questions file",
            )
        image = None if image_dir is None else _image_path(Path(image_dir), image_id, split)
        rows.append({"question_id": qid, "image_id": image_id, "question": question, "answers": answers[qid],
                     "image": image, **types[qid]})  # fmt: skip
    return vqa_items(rows)


TYPE_FIELDS = ("answer_type", "question_type")  # what VQA annotations say of a question besides its answers


def vqa_items(rows: list[dict[str, Any]], limit: int | None = None) -> list[Item]:
    """The items of a split from its rows in either layout (VQA JSON files, or parquet: `lever.eval.parquet`):
    question_id, image_id, question, answers, image (a file path or None) and, where the data has them, the
    TYPE_FIELDS; sorted by question_id, the first `limit`, `index` = position after sorting."""
    rows = sorted(rows, key=lambda r: r["question_id"])[:limit]
    return [
        Item(
            index=i,
            question_id=r["question_id"],
            image_id=r["image_id"],
            question=r["question"],
            answers=r["answers"],
            image=r["image"],
            answer_type=r.get("answer_type"),
            question_type=r.get("question_type"),
        )  # fmt: skip
        for i, r in enumerate(rows)
    ]


load_vqa = load_okvqa  # the reader is the VQA format's, whichever dataset's files it reads
