"""What an evaluation reads, checked once (`check_eval_files` -> `EvalInputs`), and the world it scores in:
demonstration items, eval questions, features, a backend. Where the data lives is `lever.data.sources`'s answer
(the `Dataset` the recipe holds); this module reads it."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lever.data.sources import Dataset, bench_config, load_features
from lever.device import resolve_device
from lever.errors import LeverError
from lever.keys import file_digest, model_fingerprint, path_fingerprint
from lever.spec import Workspace
from lever.spec.schema import EvalSpec

from .backend import Backend, Item, Request, Response
from .protocol import PromptProtocol, resolve_protocol


@dataclass
class EvalSplit:
    name: str
    items: list[Item]  # eval questions, sorted by question_id, cut to N
    features: Tensor  # [M, d] rows aligned with items
    self_rows: Tensor  # [M] the train row of each question (train split) or -1: never a demo of itself


@dataclass
class EvalWorld:
    train_items: list[Item]  # demonstration candidates; position = global train row
    train_features: Tensor  # [N, d]
    splits: dict[str, EvalSplit]
    # (device) -> backend, built only when answers are needed (not for a cached evaluation): the VLM behind the
    # workspace's reward cache (`answering_backend`)
    make_backend: Callable[[str], Backend]
    identity: dict[str, Any]  # what the results depend on besides the checkpoint (for the cache key)
    protocol: PromptProtocol  # the plan's prompt protocol and metric, resolved once
    # (part) -> (train [N, d], {split: [M, d]}): the features a `similar` selector ranks by (selector.features)
    views: Callable[[str], tuple[Tensor, dict[str, Tensor]]] | None = None
    _views: dict[str, tuple[Tensor, dict[str, Tensor]]] = field(default_factory=dict, repr=False)

    def features(self, part: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Train and per-split features of `part` (selector.features: both, image or question), computed once."""
        if part not in self._views:
            if self.views is None:
                raise LeverError(f"this evaluation world has no {part} features")
            self._views[part] = self.views(part)
        return self._views[part]


class SimBackend:
    """The bundled benchmark's simulated VLM behind the common Backend interface."""

    name = "sim"

    def __init__(self, vlm: Any):
        self.vlm = vlm

    def answer(self, requests: list[Request]) -> list[Response]:
        out: list[Response] = []
        by_split: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_split.setdefault(r.split, []).append(i)
        texts: dict[int, str] = {}
        for split, idx in by_split.items():
            answers = self.vlm.answer_batch(
                split, [requests[i].query.index for i in idx], [[d.index for d in requests[i].demos] for i in idx]
            )
            texts.update(zip(idx, answers))
        out = [Response(texts[i]) for i in range(len(requests))]
        return out

    def gt_probs(self, requests: list[Request]) -> list[float]:
        """The simulated VLM's probability of the ground-truth answers, per request."""
        probs: dict[int, float] = {}
        by_split: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_split.setdefault(r.split, []).append(i)
        for split, idx in by_split.items():
            d = self.vlm.decide(
                split, [requests[i].query.index for i in idx], [[x.index for x in requests[i].demos] for i in idx]
            )
            probs.update(zip(idx, d["gt_prob"].tolist()))
        return [probs[i] for i in range(len(requests))]


def _items(path: Path) -> list[Item]:
    """The simulated world's items, each with its answer type (lever.bench.text.answer_type: no stored field)."""
    from lever.bench.text import answer_type

    items = [Item.from_record(r) for r in json.loads(Path(path).read_text(encoding="utf-8"))]
    return [replace(it, answer_type=answer_type(it.question)) for it in items]


def _first(items: list[Item], feats: Tensor, n: int) -> tuple[list[Item], Tensor, Tensor]:
    order = sorted(range(len(items)), key=lambda i: items[i].question_id)[:n]
    return [items[i] for i in order], feats[order], torch.tensor(order)


@dataclass(frozen=True)
class EvalInputs:
    """What an evaluation reads besides the checkpoint, resolved and checked once (`check_eval_files`): the
    dataset, the plan's eval settings, the backend that answers and the prompt protocol."""

    ds: Dataset
    spec: EvalSpec
    backend: str  # "sim" (the bundled benchmark) or "hf"
    protocol: PromptProtocol

    @property
    def ws(self) -> Workspace:
        return self.ds.ws


CHECKS = {"eval_files": 0}  # how many times evaluation files were checked (a test checks once per recipe)


def check_eval_files(ds: Dataset, spec: EvalSpec) -> EvalInputs:
    """Cheap checks that an evaluation can start (protocol, backend, files, image folders and model folders
    exist); what passed, resolved, for everything after (the recipe holds it: `Recipe.eval_inputs`)."""
    CHECKS["eval_files"] += 1
    ws = ds.ws
    protocol = resolve_protocol(spec)  # a bad protocol file or setting fails here
    backend = ws.backend if spec.backend == "auto" else spec.backend
    if ws.is_bundled:
        if backend != "sim":
            raise LeverError(
                f"eval.backend = '{backend}' needs a workspace with models and OK-VQA files; the bundled benchmark answers with 'sim'"
            )
        return EvalInputs(ds, spec, backend, protocol)
    if backend == "sim":
        raise LeverError("eval.backend = 'sim' only works on the bundled benchmark")
    if "test" in spec.splits:
        ds.test_definition()  # a named list of test questions must exist
    for key, value in ds.inputs().items():
        needed = key.startswith("train") or key.rsplit("_", 1)[0] in read_splits(spec)  # train files hold the demonstrations
        if needed and not ws.path(value).exists():
            raise LeverError(f"workspace {ws.source}: {ds.table}.{key} = {value!r} does not exist")
        if needed and key.endswith("_images") and not ws.path(value).is_dir():
            raise LeverError(
                f"workspace {ws.source}: {ds.table}.{key} = {value!r} is not a folder", hint="point it at the COCO image folder"
            )
    for key in ("vlm", "clip"):
        value = getattr(ws.models, key)
        if not value or not (ws.path(value) / "config.json").is_file():
            raise LeverError(
                f"workspace {ws.source}: models.{key} = {value!r} is not a model directory with a config.json",
                hint="point it at a local transformers checkpoint",
            )
    return EvalInputs(ds, spec, backend, protocol)


def load_split(ds: Dataset, split: str, log: Callable[[str], None] = print, limit: int | None = None) -> list[Item]:
    """The items of `split` in row order (sorted question id), the first `limit`: the bundled benchmark's, or those
    of the dataset's files (VQA JSON and image folders, or parquet: `lever.eval.parquet`)."""
    if split not in ds.splits:
        raise LeverError(f"split {split!r} is not known", hint=f"use {' or '.join(ds.splits)}")
    if ds.is_bundled:
        bench = ds.bench(log)
        items = _items(getattr(bench, f"items_{split}"))  # the benchmark's file of the split (BenchPaths.items_<split>)
        return items if limit is None else sorted(items, key=lambda it: it.question_id)[:limit]
    if ds.layout == "parquet":
        from .parquet import load_parquet

        return load_parquet(ds.parquet_files(split), ds.cache("images"), ds.ws.digest_memo, limit, log)
    from .okvqa import load_okvqa

    f = ds.split_files(split)
    return load_okvqa(f["questions"], f["annotations"], f["images"], split, limit)


def read_splits(spec: EvalSpec) -> set[str]:
    """The dataset splits whose files an evaluation reads: a VQA-format dataset's test questions are val's."""
    return set(spec.splits) | ({"val"} if "test" in spec.splits else set())


def heldout_split(ds: Dataset, spec: EvalSpec, log: Callable[[str], None] = print) -> list[Item]:
    """The held-out `test` questions of a VQA-format dataset (JSON or parquet), sorted by question id: the
    official val split's questions named by the table's test_questions file, or else `test_size` of them drawn
    with `test_seed` from those after the first `test_after` by question id. Never one of the val questions the
    plan evaluates (the first eval.questions): a list naming one, or an id the val split lacks, is an error
    naming the file and the id. All of them are asked (eval.questions counts val and train questions)."""
    val = load_split(ds, "val", log)  # sorted by question id
    ids = [it.question_id for it in val]
    asked = set(ids[: question_count(spec, len(ids))])  # the plan's val questions
    t = ds.files
    where = f"workspace {ds.ws.source}: {ds.table}"
    if t.test_questions:  # type: ignore[union-attr]
        path = ds.ws.path(t.test_questions)  # type: ignore[union-attr]
        try:
            wanted = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LeverError(f"{where}.test_questions: {path} could not be read: {err}") from None
        if not isinstance(wanted, list) or not wanted or not all(isinstance(q, int) and not isinstance(q, bool) for q in wanted):
            raise LeverError(
                f"{where}.test_questions: {path} is not a JSON list of question ids", hint="e.g. [297147001, 297147002]"
            )
        known = set(ids)
        for q in wanted:
            if q not in known:
                raise LeverError(
                    f"{where}.test_questions: {path} names question {q}, which is not in the val split",
                    hint="the test questions are drawn from the dataset's official val split",
                )
            if q in asked:
                raise LeverError(
                    f"{where}.test_questions: {path} names question {q}, one of the val questions this plan evaluates "
                    f"(the first {len(asked)} by question_id)",
                    hint="the test split must share no question with val: drop it, or lower eval.questions",
                )
        chosen = set(wanted)
    else:
        n, seed, after = t.test_size, t.test_seed, t.test_after  # type: ignore[union-attr]
        if len(asked) > after:
            raise LeverError(
                f"eval.questions = {spec.questions} reaches into the held-out questions: {ds.table}.test_after = {after}",
                hint=f"set eval.questions to at most {after}, or raise {ds.table}.test_after in {ds.ws.source}",
            )
        rest = ids[after:]
        if len(rest) < n:
            raise LeverError(
                f"{where}.test_size = {n}, but the val split has {len(rest)} questions after the first {after}",
                hint=f"set {ds.table}.test_size to at most {len(rest)}, or lower test_after",
            )
        chosen = set(random.Random(seed).sample(rest, n))
    return [replace(it, index=i) for i, it in enumerate(it for it in val if it.question_id in chosen)]


def check_okvqa_rows(features: Tensor, path: Path, n_train: int) -> None:
    """On OK-VQA, row i of the train features is train question i: the counts must match."""
    if features.shape[0] != n_train:
        raise LeverError(
            f"features {path} have {features.shape[0]} rows but OK-VQA train has {n_train} questions",
            hint="row i of the features must be train question i (sorted by question_id)",
        )


def split_sizes(ds: Dataset, log: Callable[[str], None] = print) -> dict[str, int]:
    """How many questions each split has ('train' = the demonstration candidates), read without features or images."""
    if ds.is_bundled:
        bench = ds.bench(log)
        n_val = len(_items(bench.items_val))  # the held-out split has as many (bench.world.make_world)
        return {"train": len(_items(bench.items_train)), "val": n_val, "test": bench_config(ds.ws).n_val}
    if ds.layout == "parquet":
        from .parquet import row_count

        return {split: row_count(ds.parquet_files(split)) for split in ds.splits}
    from .okvqa import question_count

    return {split: question_count(ds.split_files(split)["questions"]) for split in ds.splits}


def question_count(spec: EvalSpec, size: int) -> int:
    """How many questions of a split of `size` the evaluation asks: eval.questions, or all of them ('all')."""
    return size if spec.questions == "all" else spec.questions


def check_eval_counts(spec: EvalSpec, sizes: dict[str, int], where: str = "") -> None:
    """eval.questions must fit every split it evaluates, eval.pool_size the train items; `sizes` from split_sizes."""
    for split in spec.splits:
        if split in sizes and spec.questions != "all" and spec.questions > sizes[split]:
            raise LeverError(
                f"{where}eval.questions = {spec.questions}, but the {split} split has {sizes[split]} questions",
                hint=f"set eval.questions to at most {sizes[split]}",
            )
    most = sizes["train"] - ("train" in spec.splits)  # a train question is never a demonstration of itself
    if spec.pool_size > most:
        raise LeverError(
            f"{where}eval.pool_size = {spec.pool_size}, but there are {sizes['train']} train items to draw demonstrations from",
            hint=f"set eval.pool_size to at most {most}",
        )


def eval_world(
    inputs: EvalInputs,
    train_features_path: Path | None,
    log: Callable[[str], None] = print,
    train_features: Tensor | None = None,
) -> EvalWorld:
    """Items, features and backend for the checked evaluation `inputs` (the plan's eval settings on its dataset).

    `train_features`: the tensor of `train_features_path`, when the caller has it loaded already."""
    check_eval_counts(inputs.spec, split_sizes(inputs.ds, log))
    if inputs.ds.is_bundled:
        return _bench_world(inputs, log, (train_features_path, train_features))
    return _okvqa_world(inputs, train_features_path, log, train_features)


def _bench_world(inputs: EvalInputs, log: Callable[[str], None], loaded: tuple[Path | None, Tensor | None]) -> EvalWorld:
    from lever.bench import SimVLM

    ws, spec, protocol = inputs.ws, inputs.spec, inputs.protocol
    paths = inputs.ds.bench(log)
    train_items = _items(paths.items_train)
    same = loaded[0] is not None and loaded[1] is not None and Path(loaded[0]).resolve() == Path(paths.features).resolve()
    train_feats = loaded[1] if same else load_features(Path(paths.features))
    splits: dict[str, EvalSplit] = {}
    if "val" in spec.splits:
        val_items = _items(paths.items_val)
        items, feats, _ = _first(val_items, load_features(Path(paths.val_features)), question_count(spec, len(val_items)))
        splits["val"] = EvalSplit("val", items, feats, torch.full((len(items),), -1))
    if "train" in spec.splits:
        items, feats, rows = _first(train_items, train_feats, question_count(spec, len(train_items)))
        splits["train"] = EvalSplit("train", items, feats, rows)
    if "test" in spec.splits:  # the held-out questions, written once on first use (docs/evaluation.md)
        from lever.bench.cache import ensure_test

        ensure_test(paths, bench_config(ws), log)
        test_items = _items(paths.items_test)
        items, feats, _ = _first(test_items, load_features(Path(paths.test_features)), question_count(spec, len(test_items)))
        splits["test"] = EvalSplit("test", items, feats, torch.full((len(items),), -1))
    # The held-out split's answers read its own files: a namespace of their own in the reward cache.
    test = {"files": _digests(ws, paths, True)} if "test" in spec.splits else None
    return EvalWorld(
        train_items,
        train_feats,
        splits,
        lambda device: answering_backend(inputs, SimBackend(SimVLM.load(paths)), log, test),
        # The simulated VLM reads no prompt: of the protocol, only the metric shapes its numbers.
        {
            "backend": "sim",
            "world": Path(paths.root).name,
            "files": _digests(ws, paths, "test" in spec.splits),
            "metric": protocol.metric,
        }
        | sim_behaviour(spec.shots),
        protocol,
        lambda part: _bench_views(part, train_items, train_feats, splits, bench_config(ws).item_features),
    )


def answering_backend(
    inputs: EvalInputs, inner: Backend, log: Callable[[str], None], test: dict[str, Any] | None = None
) -> Backend:
    """The evaluation's VLM behind the workspace's reward cache, under the identity training's scoring and `lever data
    generate` store their answers by (`scoring_identity`, with the protocol the evaluation answers with, its
    `sampling` included): a prompt one of them answered is not asked again, and the other way round. `test`: what
    the held-out split's answers depend on besides it."""
    from .reward_cache import cached_backend, scoring_identity

    identity = scoring_identity(inputs.ds, inputs.spec, log, inputs.protocol)
    return cached_backend(inner, inputs.ws.cache_dir, identity, None if test is None else {"test": test})


def sim_behaviour(shots: list[int]) -> dict[str, int]:
    """The simulated VLM's behaviour version, in the key of an evaluation that asks a shot count outside 1..4 (its
    zero-shot and beyond-4 behaviour is `lever.bench.vlm.BEHAVIOUR`'s); evaluations at 1..4 keep their keys."""
    from lever.bench.vlm import BEHAVIOUR

    return {"vlm": BEHAVIOUR} if any(not 1 <= s <= 4 for s in shots) else {}


def _bench_views(
    part: str, train_items: list[Item], train_feats: Tensor, splits: dict[str, EvalSplit], item_features: str
):  # fmt: skip
    """The bundled benchmark's features by part, as CLIP's on the real path (lever.eval.clip): the world has an
    image stand-in i and a model-free embedding q of the question text (both unit vectors); `both` is their
    normalised sum. The item features hold `both` (item_features = "both"; the image view is then recovered
    exactly: b = (i + q) / |i + q| with |i| = 1 gives i = 2 (b . q) b - q) or i alone ("image")."""
    from lever.bench.text import question_embedding

    def view(feats: Tensor, items: list[Item]) -> Tensor:
        unit = torch.nn.functional.normalize
        feats = unit(feats.float(), dim=-1)
        question = question_embedding([it.question for it in items], feats.shape[1])
        if item_features == "image":
            image, both = feats, unit(feats + question, dim=-1)
        else:  # feats = normalise(i + q) with |i| = 1: i = 2 (feats . q) feats - q
            image, both = unit(2 * (feats * question).sum(-1, keepdim=True) * feats - question, dim=-1), feats
        return {"image": image, "question": question, "both": both}[part]

    return view(train_feats, train_items), {name: view(sp.features, sp.items) for name, sp in splits.items()}


def _digests(ws: Workspace, paths: Any, test: bool = False) -> dict[str, str]:
    """Content keys of the benchmark files an evaluation reads (items, features, the simulated VLM; the held-out
    split's only when it asks for it, so evaluations of train and val keep their keys)."""
    files = (paths.items_train, paths.items_val, paths.features, paths.val_features, paths.world)
    if test:
        files += (paths.items_test, paths.test_features, paths.test_world)
    return {Path(f).name: file_digest(Path(f), ws.digest_memo)[:16] for f in files}


def _okvqa_world(
    inputs: EvalInputs, train_features_path: Path | None, log: Callable[[str], None], train_features: Tensor | None = None
) -> EvalWorld:
    from .clip import cached_clip_features

    ds, ws, spec, protocol = inputs.ds, inputs.ws, inputs.spec, inputs.protocol
    train_items = load_split(ds, "train", log)
    if train_features_path is None:
        raise LeverError("evaluation needs the train features file (data.features)")
    train_feats = load_features(train_features_path) if train_features is None else train_features
    check_okvqa_rows(train_feats, train_features_path, len(train_items))
    splits: dict[str, EvalSplit] = {}
    folder = ds.cache("clip")
    if "val" in spec.splits:
        items = load_split(ds, "val", log, None if spec.questions == "all" else spec.questions)
        clip_device = str(resolve_device("auto"))  # the GPU when there is one: embedding 800 images is real work
        feats = cached_clip_features(items, ws.path(ws.models.clip), folder / f"val-{len(items)}.pt", device=clip_device)
        splits["val"] = EvalSplit("val", items, feats, torch.full((len(items),), -1))
    if "train" in spec.splits:
        n = question_count(spec, len(train_items))  # check_eval_counts: at most the train questions
        splits["train"] = EvalSplit("train", train_items[:n], train_feats[:n], torch.arange(n))
    if "test" in spec.splits:
        items = heldout_split(ds, spec, log)
        feats = cached_clip_features(
            items, ws.path(ws.models.clip), folder / f"test-{len(items)}.pt", device=str(resolve_device("auto"))
        )
        splits["test"] = EvalSplit("test", items, feats, torch.full((len(items),), -1))
    return EvalWorld(
        train_items,
        train_feats,
        splits,
        lambda device: answering_backend(inputs, make_hf_backend(ws, spec, device), log),
        {**okvqa_identity(ds, spec, train_features_path), "protocol": protocol.identity()},
        protocol,
        lambda part: _okvqa_views(ws, part, train_items, train_feats, splits, folder),
    )


def _okvqa_views(
    ws: Workspace, part: str, train_items: list[Item], train_feats: Tensor, splits: dict[str, EvalSplit], folder: Path
):
    """A VQA-format dataset's features by part: `both` = the item features (the features file, and the val questions' CLIP
    embeddings: the mean of image and question); `image` and `question` = CLIP's image or question embedding
    alone, computed once per split and cached in the dataset's CLIP cache `folder` (on the GPU when there is one)."""
    if part == "both":
        return train_feats, {name: sp.features for name, sp in splits.items()}
    from .clip import cached_clip_features

    device = str(resolve_device("auto"))
    clip_dir = ws.path(ws.models.clip)

    def view(name: str, items: list[Item]) -> Tensor:
        return cached_clip_features(items, clip_dir, folder / f"{name}-{part}-{len(items)}.pt", device=device, part=part)

    train = view("train", train_items)
    return train, {name: train[: len(sp.items)] if name == "train" else view(name, sp.items) for name, sp in splits.items()}


def okvqa_identity(ds: Dataset, spec: EvalSpec, train_features_path: Path) -> dict[str, Any]:
    """Every input an evaluation on a VQA-format dataset reads, by content: model folders (config and weight
    hashes), the dataset's files (digests), the image folders (a hash of their listing) and the train features.
    Another dataset than okvqa adds its name (okvqa's keys stay those made before datasets had names)."""
    ws = ds.ws
    memo = ws.digest_memo
    o = ds.inputs()
    used = [k for k in o if k.startswith("train") or k.rsplit("_", 1)[0] in read_splits(spec)]
    out = {
        "backend": "hf",
        "vlm": model_fingerprint(ws.path(ws.models.vlm), memo),
        "clip": model_fingerprint(ws.path(ws.models.clip), memo),
        "okvqa": {k: path_fingerprint(ws.path(o[k]), memo) for k in used},
        "features": file_digest(train_features_path, memo)[:16],
    }
    if "test" in spec.splits:  # what makes the held-out questions (evaluations without it keep their keys)
        out["test"] = ds.test_definition()
    if ds.named():
        out["files"] = out.pop("okvqa")
    return out | ds.named()


def make_hf_backend(ws: Workspace, spec: EvalSpec, device: str = "auto", protocol: PromptProtocol | None = None) -> Backend:
    """The transformers backend for the workspace's VLM directory and the plan's generation settings; `protocol`
    replaces the plan's resolved one (`data generate` answers with `PromptProtocol.for_candidates()`)."""
    if not ws.models.vlm:
        raise LeverError(f"workspace {ws.source}: [models] vlm is needed for the hf backend")
    from .hf import HFBackend

    return HFBackend(
        ws.path(ws.models.vlm),
        device=device,
        batch_size=spec.batch_size,
        max_new_tokens=spec.max_new_tokens,
        num_beams=spec.num_beams,
        dtype=spec.dtype,
        protocol=protocol or resolve_protocol(spec),
        attn_implementation=spec.attn_implementation,
    )
