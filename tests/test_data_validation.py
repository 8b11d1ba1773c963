"""Every validation case of the candidate-data reader, through `lever data stats` (exit 2, a
message naming the file, the query id, the candidate index and the field)."""

from __future__ import annotations

import copy
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from data_cli import run_cli

from lever.data.synthetic import synthetic_records


def base() -> dict[str, Any]:
    """Three queries (100, 103, 106), four sequences of two shots each, pools of six."""
    return synthetic_records(queries=3, group=4, pool=6, shots=2, ragged=False, seed=1)


def write(tmp_path: Path, records: dict[str, Any] | str, name: str = "cands.json") -> Path:
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records, indent=2), encoding="utf-8")
    return path


def cand(recs: dict[str, Any], qid: str = "103", i: int = 1) -> dict[str, Any]:
    return recs[qid]["pointer_candidates"][i]


def corrupt(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    recs = copy.deepcopy(base())
    fn(recs)
    return recs


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the workspace cache folder, if any, lands here
    monkeypatch.delenv("LEVER_WORKSPACE", raising=False)


def test_valid_file_passes(tmp_path):
    code, out = run_cli("stats", write(tmp_path, base()), "--no-cache")
    assert code == 0, out
    assert "queries" in out and "12" in out  # 3 queries x 4 sequences


# (mutation, text that must appear besides the file name, query id and candidate index)
def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda r: cand(r).__setitem__(field, value)


def _del(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda r: cand(r).pop(field)


CANDIDATE_CASES = {
    "missing pointer": (_del("pointer"), "missing field 'pointer'"),
    "missing vqa_correct": (_del("vqa_correct"), "field 'vqa_correct' is missing"),
    "missing vqa_acc_score": (_del("vqa_acc_score"), "field 'vqa_acc_score' is missing"),
    "pointer past the pool": (_set("pointer", [0, 6]), "field 'pointer' holds 6, outside the pool: valid local indices are 0..5"),
    "negative pointer": (_set("pointer", [-1, 2]), "field 'pointer' holds -1, outside the pool"),
    "repeated index": (_set("pointer", [2, 2]), "field 'pointer' is [2, 2]: an index repeats"),
    "other length": (_set("pointer", [0, 1, 2]), "field 'pointer' has 3 indices, but the file's first sequence"),
    "empty pointer": (_set("pointer", []), "field 'pointer' is empty"),
    "pointer wrong type": (_set("pointer", "0,1"), "field 'pointer': expected array, got str"),
    "pointer float item": (_set("pointer", [0, 1.5]), "field 'pointer' item 1: expected int, got float"),
    "vqa_correct not 0/1": (_set("vqa_correct", 2), "field 'vqa_correct' is 2: must be 0 or 1"),
    "acc outside [0, 1]": (_set("vqa_acc_score", 1.5), "field 'vqa_acc_score' is 1.5: VQA accuracy lies in [0, 1]"),
    "score wrong type": (_set("vqa_acc_score", "high"), "field 'vqa_acc_score': expected int | float | null, got str"),
    "pointer_global length": (_set("pointer_global", [1]), "field 'pointer_global' has 1 indices, 'pointer' has 2"),
    "candidate not an object": (lambda r: r["103"]["pointer_candidates"].__setitem__(1, [0, 1]), "expected object, got array"),
}


@pytest.mark.parametrize("case", sorted(CANDIDATE_CASES))
def test_candidate_problems(tmp_path, case):
    mutate, expected = CANDIDATE_CASES[case]
    path = write(tmp_path, corrupt(mutate))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2
    assert f"{path}: query 103, candidate 1: " in out
    assert expected in out


def test_correct_inconsistent_with_acc(tmp_path):
    def mutate(r):
        cand(r).update(vqa_correct=1, vqa_acc_score=0.0)

    code, out = run_cli("stats", write(tmp_path, corrupt(mutate)), "--no-cache")
    assert code == 2
    assert "query 103, candidate 1: field 'vqa_correct' is 1 but vqa_acc_score is 0" in out
    assert "vqa_correct must be 1 exactly when vqa_acc_score > 0" in out


def test_pointer_global_inconsistent_with_pool(tmp_path):
    recs = base()
    c = cand(recs)
    pool = recs["103"]["candidate_pool_ids"]
    c["pointer_global"] = [pool[c["pointer"][1]], pool[c["pointer"][0]]]  # swapped: same items, wrong order
    code, out = run_cli("stats", write(tmp_path, recs), "--no-cache")
    assert code == 2
    assert "query 103, candidate 1: field 'pointer_global' is" in out
    assert "but the pool items at pointer" in out


def test_several_bad_candidates_are_counted(tmp_path):
    def mutate(r):
        for c in r["103"]["pointer_candidates"][1:]:
            c["pointer"] = [3, 3]

    code, out = run_cli("stats", write(tmp_path, corrupt(mutate)), "--no-cache")
    assert code == 2
    assert "query 103, candidate 1: field 'pointer'" in out and "(2 more candidates have this problem)" in out


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nonfinite_score(tmp_path, literal):
    def mutate(r):
        cand(r).update(vqa_correct=1, vqa_acc_score=0.123456789)  # a value to find in the text

    text = json.dumps(corrupt(mutate), indent=2).replace("0.123456789", literal)
    code, out = run_cli("stats", write(tmp_path, text), "--no-cache")
    assert code == 2
    assert f"query 103, candidate 1: field 'vqa_acc_score': is {literal}, scores and indices must be finite" in out


def test_overflowing_number(tmp_path):
    path = write(tmp_path, json.dumps(corrupt(_set("vqa_gt_prob", 12345.0))).replace("12345.0", "1e999"))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2
    assert "query 103, candidate 1: field 'vqa_gt_prob': is a number out of range" in out


def test_nonfinite_in_an_unused_field_is_accepted(tmp_path):
    # Python's json writes NaN; a field lever does not read may hold it
    text = json.dumps(corrupt(_set("beam_score", float("nan"))))
    assert "NaN" in text
    code, out = run_cli("stats", write(tmp_path, text), "--no-cache")
    assert code == 0, out


# ---- record and file level -------------------------------------------------------


def test_invalid_json_names_line_and_column(tmp_path):
    lines = json.dumps(base(), indent=2).splitlines()
    n = next(i for i, line in enumerate(lines) if '"vqa_correct"' in line)
    lines[n] = lines[n].replace(",", "", 1)  # a missing comma at the end of line n + 1
    path = write(tmp_path, "\n".join(lines))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2
    col = len(lines[n + 1]) - len(lines[n + 1].lstrip()) + 1  # where the next key starts
    assert f"{path}: invalid JSON at line {n + 2}, column {col}" in out


def test_invalid_json_position_with_nan_literals_before_it(tmp_path):
    recs = base()
    for rec in (recs["106"], recs["103"]):  # written first: NaN literals before the error
        rec["pointer_candidates"][0]["beam_score"] = float("nan")
    lines = json.dumps(recs, indent=2).splitlines()
    n = max(i for i, line in enumerate(lines) if '"vqa_correct"' in line)  # in the last query
    lines[n] = lines[n].replace(",", "", 1)
    code, out = run_cli("stats", write(tmp_path, "\n".join(lines)), "--no-cache")
    col = len(lines[n + 1]) - len(lines[n + 1].lstrip()) + 1
    assert code == 2 and f"invalid JSON at line {n + 2}, column {col}" in out


def test_invalid_json_column_counts_nan_literals_on_the_same_line(tmp_path):
    recs = base()
    recs["106"]["pointer_candidates"][0]["beam_score"] = float("nan")  # query 106 is written first
    text = json.dumps(recs)  # one line
    cut = text.rindex(', "vqa_correct"')
    text = text[:cut] + text[cut + 1 :]  # drop the comma: the error is at the next key
    code, out = run_cli("stats", write(tmp_path, text), "--no-cache")
    assert code == 2 and f"invalid JSON at line 1, column {cut + 2}" in out


def test_truncated_file(tmp_path):
    text = json.dumps(base())
    code, out = run_cli("stats", write(tmp_path, text[: len(text) // 2]), "--no-cache")
    assert code == 2 and "invalid JSON: the file ends before the JSON is complete" in out


def test_missing_record_field(tmp_path):
    path = write(tmp_path, corrupt(lambda r: r["103"].pop("candidate_pool_ids")))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2 and f"{path}: query 103: missing field 'candidate_pool_ids'" in out


def test_query_without_sequences(tmp_path):
    path = write(tmp_path, corrupt(lambda r: r["103"].__setitem__("pointer_candidates", [])))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2 and f"{path}: query 103: no usable sequence" in out


def test_key_that_is_not_a_query_id(tmp_path):
    path = write(tmp_path, corrupt(lambda r: r.__setitem__("q103", r.pop("103"))))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2 and "top-level key 'q103' is not a query id" in out


def test_query_id_appears_twice(tmp_path):
    path = write(tmp_path, corrupt(lambda r: r.__setitem__("0103", r["103"])))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2 and "query id 103 appears more than once" in out


def test_query_id_disagrees_with_key(tmp_path):
    path = write(tmp_path, corrupt(lambda r: r["103"]["query"].__setitem__("query_id", 999)))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2 and "query 103: field 'query.query_id' is 999" in out


def test_negative_pool_item(tmp_path):
    path = write(tmp_path, corrupt(lambda r: r["103"]["candidate_pool_ids"].__setitem__(0, -5)))
    code, out = run_cli("stats", path, "--no-cache")
    assert code == 2 and "query 103: field 'candidate_pool_ids' holds -5" in out


@pytest.mark.parametrize(
    "text, expected",
    [("", "the file is empty"), ("[1, 2]", "the top level must be a JSON object"), ('{"_meta": {}}', "no queries in the file")],
)
def test_file_level_problems(tmp_path, text, expected):
    code, out = run_cli("stats", write(tmp_path, text), "--no-cache")
    assert code == 2 and expected in out


def test_missing_file(tmp_path):
    code, out = run_cli("stats", tmp_path / "nope.json", "--no-cache")
    assert code == 2 and "no such candidate-data file" in out


def _repeat_key(text: str, key: str) -> str:
    """The JSON text with query `key`'s record given a second time, at the end (json.dumps cannot write that)."""
    record = json.dumps(json.loads(text)[key], indent=2)
    return text.rstrip().removesuffix("}") + f',\n  "{key}": {record}\n}}\n'


@pytest.mark.parametrize("nan", [False, True], ids=["plain", "with NaN literals"])
def test_query_key_given_twice(tmp_path, nan):
    recs = base()
    if nan:  # the reader's second path (NaN literals read as marker strings)
        cand(recs, "100", 0)["unused"] = float("nan")
    path = write(tmp_path, _repeat_key(json.dumps(recs, indent=2), "103"))
    assert json.loads(path.read_text()).keys() == recs.keys()  # a JSON reader keeps the last "103" silently
    for cache in ("--no-cache", "--cache"):  # never parsed, so never cached: refused both times
        code, out = run_cli("stats", path, cache)
        assert code == 2 and f"{path}: query key '103' appears more than once" in out, out
    # the first of three, and a key written with an escape (JSON's "\u0031" is "1")
    text = json.dumps(recs, indent=2).replace('"100":', '"1\\u0030\\u0030":', 1)
    code, out = run_cli("stats", write(tmp_path, _repeat_key(_repeat_key(text, "100"), "100")), "--no-cache")
    assert code == 2 and "query key '100' appears more than once" in out, out


@pytest.mark.parametrize(
    "field, value",
    [("vqa_gt_prob", 1.5), ("vqa_gt_prob", -0.25), ("vqa_rel_score", 2)],
)
def test_probabilities_outside_0_1(tmp_path, field, value):
    path = write(tmp_path, corrupt(_set(field, value)))
    for cache in ("--no-cache", "--cache", "--cache"):  # fresh, then with the parse cache (never filled)
        code, out = run_cli("stats", path, cache)
        assert code == 2 and f"{path}: query 103, candidate 1: field '{field}' is {value:g}: it lies in [0, 1]" in out, out


def test_probabilities_at_the_ends_and_missing_are_read(tmp_path):
    recs = corrupt(_set("vqa_gt_prob", 1.0))
    cand(recs, "103", 2)["vqa_gt_prob"] = 0
    cand(recs, "103", 3).pop("vqa_rel_score")
    code, out = run_cli("stats", write(tmp_path, recs), "--no-cache")
    assert code == 0, out


def _locked(monkeypatch, folder: Path) -> None:
    """os.stat (and so pathlib) refuses every path inside `folder`, as for a folder the user may not enter."""
    real = os.stat

    def stat(path, *args, **kwargs):
        if str(path).startswith(f"{folder}{os.sep}"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)


@pytest.mark.parametrize("how", ["chmod 000", "os.stat refuses"])
def test_a_file_in_a_folder_without_permission(tmp_path, monkeypatch, how):
    folder = tmp_path / "locked"
    folder.mkdir()
    path = write(folder, base())
    if how == "chmod 000":
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions")
        folder.chmod(0)
    else:
        _locked(monkeypatch, folder)
    try:
        for cache in ("--no-cache", "--cache"):
            code, out = run_cli("stats", path, cache)
            assert code == 2 and f"candidate-data file {path} cannot be read: permission denied" in out, out
    finally:
        folder.chmod(0o755)


def test_training_inputs_in_a_folder_without_permission(tmp_path, monkeypatch):
    # what `lever run` touches first: the plan's data paths (lever.data.sources), then their digests (lever.keys)
    from lever.data.sources import load_features, resolve_dataset, resolve_train_sources
    from lever.errors import LeverError
    from lever.keys import file_digest
    from lever.spec import Workspace

    folder = tmp_path / "locked"
    folder.mkdir()
    path = write(folder, base())
    _locked(monkeypatch, folder)
    with pytest.raises(LeverError, match=f"candidate-data file {path} cannot be read: permission denied"):
        resolve_train_sources(resolve_dataset(Workspace()), str(path), "main")
    with pytest.raises(LeverError, match=f"features file {folder / 'f.pt'} cannot be read: permission denied"):
        load_features(folder / "f.pt")
    with pytest.raises(LeverError, match=f"input file {path} cannot be read: permission denied"):
        file_digest(path)
    monkeypatch.undo()  # the folder opens again; the file itself does not

    def no_read(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("builtins.open", no_read)
    with pytest.raises(LeverError, match=f"input file {path} cannot be read: permission denied"):
        file_digest(path)
