"""Reader for datasets in the Hugging Face layout (the copies lmms-eval evaluates on): parquet files whose rows hold

    image          the image: a struct {"bytes", "path"} (the `datasets` Image feature) or the bytes themselves
    question_id    int, unique over the split's files
    question       str
    answers        the human answers: a list of str (OK-VQA's copy) or of {"answer", ...} (VQAv2's)
    image_id, answer_type, question_type   optional; carried as the VQA JSON reader carries them

Read with pyarrow (the `hf` extra), never `datasets`: pyarrow reads the named columns of local files, in batches,
and nothing else, while `datasets.load_dataset` builds an Arrow cache of its own and resolves names against the
Hub. Everything downstream reads image files (CLIP, the VLM's processor, the preflight), so each image is written
once, byte for byte, into the workspace cache (`<cache>/images/<dataset>/<key of the files>/`), after it is
decoded once: an image that does not decode is an error naming the file, row and column, as a missing column or a
question id listed twice is. Items are then those of the JSON layout (`lever.eval.okvqa.vqa_items`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lever.errors import LeverError
from lever.io import atomic_write, write_json
from lever.keys import content_key, file_digest

from .backend import Item
from .okvqa import TYPE_FIELDS, vqa_items

REQUIRED = ("image", "question_id", "question", "answers")
OPTIONAL = ("image_id", *TYPE_FIELDS)


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LeverError(
            "reading parquet datasets needs pyarrow, which is not installed",
            hint="pip install 'lever[hf]' (or pip install pyarrow)",
        ) from None
    return pq


def _open(path: Path) -> Any:
    pq = _pq()
    if not path.is_file():
        raise LeverError(f"parquet file {path} does not exist", hint="check the dataset's *_parquet files in the workspace")
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise LeverError(f"{path} cannot be read as a parquet file: {err}", hint="download the file again") from None


def _columns(path: Path, pf: Any) -> list[str]:
    """The columns of `pf` lever reads; a LeverError naming a required column that is missing."""
    names = pf.schema_arrow.names
    for col in REQUIRED:
        if col not in names:
            raise LeverError(
                f"{path}: no column '{col}' (columns: {', '.join(names)})",
                hint=f"a parquet dataset needs the columns {', '.join(REQUIRED)} (docs/datasets.md)",
            )
    return [c for c in (*REQUIRED, *OPTIONAL) if c in names]


def row_count(files: list[Path]) -> int:
    """How many rows (questions) the files hold, read from their footers."""
    return sum(_open(f).metadata.num_rows for f in files)


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in value):
        return [a["answer"] for a in value]
    raise LeverError(
        f"{where}, column 'answers': expected a non-empty list of answers (strings, or {{'answer': ...}}), got {value!r:.80}"
    )


def _image_bytes(value: Any, where: str) -> bytes:
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        raise LeverError(
            f"{where}, column 'image': no image bytes",
            hint="the parquet layout carries each image inside the file ({'bytes': ...})",
        )
    return data


def _decodes(data: bytes) -> str | None:
    """None when the bytes decode as an image (whole, at 1/8 scale for JPEG), else the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"


def _suffix(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg" if data.startswith(b"\xff\xd8") else ".img"


def read_rows(files: list[Path]) -> list[dict[str, Any]]:
    """Every row's fields but the image, checked: required columns present, ids and text well formed, no
    question id twice; each row also names where it came from (`_file`, `_row`) for the image pass."""
    rows: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for path in files:
        pf = _open(path)
        cols = [c for c in _columns(path, pf) if c != "image"]
        for i, r in enumerate(pf.read(columns=cols).to_pylist()):
            where = f"{path}: row {i}"
            try:
                qid = int(r["question_id"])
            except (TypeError, ValueError):
                raise LeverError(f"{where}, column 'question_id': {r['question_id']!r} is not an integer id") from None
            if qid in seen:
                raise LeverError(
                    f"{where}, column 'question_id': question {qid} is listed twice (first at {seen[qid]})",
                    hint="each question id appears once in a split's files; remove the repeated rows or files",
                )
            seen[qid] = where
            if not isinstance(r["question"], str) or not r["question"].strip():
                raise LeverError(f"{where}, column 'question': expected the question text, got {r['question']!r:.80}")
            image_id = r.get("image_id")
            try:
                image_id = -1 if image_id is None else int(image_id)
            except (TypeError, ValueError):
                raise LeverError(f"{where}, column 'image_id': {image_id!r} is not an integer id") from None
            row = {"question_id": qid, "image_id": image_id, "question": r["question"], "answers": _answers(r["answers"], where)}
            row.update({k: str(r[k]) for k in TYPE_FIELDS if r.get(k) is not None})
            rows.append(row | {"_file": path, "_row": i})
    return rows


def extract_images(
    files: list[Path], rows: list[dict[str, Any]], folder: Path, log: Callable[[str], None] = print
) -> dict[int, str]:
    """{question_id: image file}: each row's image written once (byte for byte) into `folder`, after it decoded.

    A file per image id (per question id where the files hold no image_id); `folder/complete.json` marks a
    finished extraction, so later reads only list the files. A row whose image does not decode is an error
    naming its file, row and column (nothing is marked complete)."""
    name = {r["question_id"]: f"{r['image_id']}" if r["image_id"] >= 0 else f"q{r['question_id']}" for r in rows}
    done = folder / "complete.json"
    if done.is_file():
        found = {p.stem: str(p) for p in folder.iterdir() if p.name != done.name}
        if all(n in found for n in name.values()):
            return {q: found[n] for q, n in name.items()}
    folder.mkdir(parents=True, exist_ok=True)
    log(f"parquet: writing the images of {len(rows)} rows to {folder} (once)")
    out: dict[int, str] = {}
    for path in files:
        pf = _open(path)
        i = 0
        for batch in pf.iter_batches(columns=["question_id", "image"], batch_size=256):
            for qid, value in zip(batch.column("question_id").to_pylist(), batch.column("image").to_pylist()):
                where = f"{path}: row {i}"
                i += 1
                data = _image_bytes(value, where)
                qid = int(qid)
                target = folder / f"{name[qid]}{_suffix(data)}"
                if target.is_file():
                    out[qid] = str(target)
                    continue
                bad = _decodes(data)
                if bad:
                    raise LeverError(
                        f"{where} (question {qid}), column 'image': the image does not decode ({bad})",
                        hint="download the file again, or remove the row",
                    )
                atomic_write(target, lambda tmp, d=data: tmp.write_bytes(d))
                out[qid] = str(target)
    write_json(done, {"rows": len(out)})
    return out


def load_parquet(
    files: list[Path],
    image_root: Path,
    memo: Path,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Item]:
    """The items of a split in the parquet layout, sorted by question_id, the first `limit`; its images in a
    folder of `image_root` named by the files' content (`memo`: the workspace's digest memo)."""
    if not files:
        raise LeverError("a parquet split names no files", hint="list its files in the workspace (docs/datasets.md)")
    rows = read_rows(files)
    key = content_key([file_digest(f, memo) for f in files], length=16)
    images = extract_images(files, rows, image_root / key, log)
    for r in rows:
        r["image"] = images[r["question_id"]]
    return vqa_items(rows, limit)
