"""The workspace: where data, features, images, models and runs live on this machine.

Found, in order: the `--workspace` flag, the `LEVER_WORKSPACE` environment variable,
`lever.toml` in the current directory. `LEVER_RUNS`, when set, overrides where runs go. With none, the workspace is the bundled
benchmark: data is generated into the cache on first use and evaluated with the `sim`
backend. Relative paths in a workspace file are relative to that file.

Example `lever.toml` for a real OK-VQA setup::

    runs = "runs"
    cache = ".lever-cache"
    backend = "hf"

    [candidates]
    main = "results/okvqa/generated_data/rl_data_k64_v3.json"
    balanced = "results/okvqa/generated_data/rl_data_k64_v3_balanced.json"

    [features]
    main = "cache/query_embeddings.pt"

    [okvqa]
    train_questions = "okvqa/OpenEnded_mscoco_train2014_questions.json"
    train_annotations = "okvqa/mscoco_train2014_annotations.json"
    train_images = "coco/train2014"
    val_questions = "okvqa/OpenEnded_mscoco_val2014_questions.json"
    val_annotations = "okvqa/mscoco_val2014_annotations.json"
    val_images = "coco/val2014"

    [models]
    vlm = "models/Qwen2.5-VL-3B-Instruct"
    clip = "models/clip-vit-base-patch32"

Another dataset in the same VQA format (VQAv2) is a `[datasets.NAME]` table with the same six
files and its own candidate data and features, chosen by a plan's `data.dataset = "NAME"`
(docs/datasets.md)::

    [datasets.vqav2]
    train_questions = "vqav2/v2_OpenEnded_mscoco_train2014_questions.json"
    train_annotations = "vqav2/v2_mscoco_train2014_annotations.json"
    train_images = "coco/train2014"
    val_questions = "vqav2/v2_OpenEnded_mscoco_val2014_questions.json"
    val_annotations = "vqav2/v2_mscoco_val2014_annotations.json"
    val_images = "coco/val2014"
    candidates = { balanced_v3 = "results/vqav2/rl_data_balanced_v3.json" }
    features = { main = "results/vqav2/query_embeddings.pt" }

The same data in the Hugging Face parquet layout (lmms-eval's copies: rows with the image bytes, question,
question_id, answers, answer_type, question_type) names parquet files per split instead of the six::

    [datasets.okvqa_hf]
    train_parquet = "hf/okvqa_train/*.parquet"
    val_parquet = ["hf/OK-VQA/data/val2014-00000-of-00002.parquet", "hf/OK-VQA/data/val2014-00001-of-00002.parquet"]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lever.errors import LeverError
from lever.io import read_text

from .load import format_validation_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WORKSPACE_ENV = "LEVER_WORKSPACE"
WORKSPACE_FILE = "lever.toml"
RUNS_ENV = "LEVER_RUNS"
DEFAULT_DATASET = "okvqa"  # the dataset of the top-level [okvqa], [candidates] and [features] tables


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeldOut(_Strict):
    """The dataset's held-out `test` split: questions of the official val split that `val` evaluations never ask
    (docs/evaluation.md, Held-out split). A user's list of question ids, or else a seeded draw."""

    test_questions: str | None = Field(
        None, description="JSON list of val-split question ids that make the test split (instead of the seeded draw)"
    )
    test_size: int = Field(1000, ge=1, description="Seeded draw: how many test questions")
    test_seed: int = Field(0, description="Seeded draw: the seed")
    test_after: int = Field(
        1000,
        ge=0,
        description="Seeded draw: from the val split's questions after the first test_after by question_id "
        "(those val evaluations ask: eval.questions at most this)",
    )


VQA_KEYS = ("train_questions", "train_annotations", "train_images", "val_questions", "val_annotations", "val_images")


class OKVQAPaths(HeldOut):
    """Official OK-VQA files and COCO image folders."""

    train_questions: str = Field(description="OK-VQA train questions JSON")
    train_annotations: str = Field(description="OK-VQA train annotations JSON")
    train_images: str = Field(description="COCO train2014 image folder")
    val_questions: str = Field(description="OK-VQA val questions JSON")
    val_annotations: str = Field(description="OK-VQA val annotations JSON")
    val_images: str = Field(description="COCO val2014 image folder")

    def files(self) -> dict[str, str]:
        """The six files and folders, by key (train_questions, ..., val_images)."""
        return {k: getattr(self, k) for k in VQA_KEYS}


class DatasetPaths(HeldOut):
    """A dataset in one of two layouts, with the candidate data and features made from its train split:
    the VQA files (VQAv2's or OK-VQA's: questions and annotations JSON, COCO images per split), or parquet
    files in the Hugging Face layout lmms-eval evaluates on (rows with the image bytes; docs/datasets.md)."""

    train_questions: str | None = Field(None, description="Train questions JSON ({'questions': [...]})")
    train_annotations: str | None = Field(None, description="Train annotations JSON ({'annotations': [...]}, ten answers each)")
    train_images: str | None = Field(None, description="Train image folder (COCO_train2014_<image_id>.jpg)")
    val_questions: str | None = Field(None, description="Val questions JSON")
    val_annotations: str | None = Field(None, description="Val annotations JSON")
    val_images: str | None = Field(None, description="Val image folder (COCO_val2014_<image_id>.jpg)")
    train_parquet: list[str] | None = Field(
        None,
        description="Train parquet files (paths, glob patterns or folders) in the Hugging Face layout, instead of the JSON files",
    )
    val_parquet: list[str] | None = Field(None, description="Val parquet files (paths, glob patterns or folders)")
    candidates: dict[str, str] = Field(default_factory=dict, description="Candidate-data names -> JSON files of this dataset")
    features: dict[str, str] = Field(
        default_factory=dict, description="Feature names -> [N_train, d] tensor files of this dataset"
    )

    @field_validator("train_parquet", "val_parquet", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_layout(self) -> DatasetPaths:
        json_keys = [k for k in VQA_KEYS if getattr(self, k, None) is not None]
        parquet = [k for k in PARQUET_KEYS if getattr(self, k) is not None]
        if json_keys and parquet:
            raise ValueError(f"give the VQA JSON files or parquet files, not both ({json_keys[0]} and {parquet[0]})")
        if parquet:
            missing = [k for k in PARQUET_KEYS if not getattr(self, k)]
        else:  # train and val are needed; another split's files are optional
            missing = [k for k in VQA_KEYS if k.startswith(("train_", "val_")) and getattr(self, k, None) is None]
        if missing:
            raise ValueError(
                f"missing {', '.join(missing)}: a dataset needs train and val files, as the six VQA JSON files and "
                "image folders or as train_parquet and val_parquet"
            )
        return self

    @property
    def layout(self) -> Literal["vqa", "parquet"]:
        return "parquet" if self.train_parquet else "vqa"

    def files(self) -> dict[str, str]:
        """The VQA JSON files and folders, by key (train_questions, ..., val_images); {} in the parquet layout."""
        return {k: getattr(self, k) for k in VQA_KEYS if getattr(self, k, None) is not None}

    def parquet(self) -> dict[str, list[str]]:
        """The parquet files (patterns) by split; {} in the VQA JSON layout."""
        return {k.rsplit("_", 1)[0]: getattr(self, k) for k in PARQUET_KEYS if getattr(self, k)}


PARQUET_KEYS = ("train_parquet", "val_parquet")


class ModelPaths(_Strict):
    """Local model directories (no hub access is assumed)."""

    vlm: str | None = Field(None, description="Image-text-to-text model directory (Qwen2.5-VL)")
    clip: str | None = Field(None, description="CLIP model directory for features")


class Workspace(_Strict):
    """Where things live. No `candidates` table means the bundled benchmark."""

    SET_BY_LEVER: ClassVar[tuple[str, ...]] = ("root", "source")  # not keys of the file

    root: Path = Field(Path("."), description="Directory relative paths are resolved against")
    source: str = Field("bundled benchmark (no workspace file)", description="Where this workspace came from")
    runs: str = Field("runs", description="Run directories")
    cache: str = Field(".lever-cache", description="Generated benchmark, parsed data and feature caches")
    plans: str = Field("plans", description="Where plan names are looked up")
    backend: Literal["sim", "hf"] = Field("sim", description="Evaluation backend for plans with eval.backend = 'auto'")
    bench: dict[str, Any] = Field(
        default_factory=dict, description="Bundled benchmark generator settings (see docs/benchmark.md)"
    )
    candidates: dict[str, str] = Field(default_factory=dict, description="Candidate-data names -> JSON files")
    features: dict[str, str] = Field(default_factory=dict, description="Feature names -> [N_train, d] tensor files")
    okvqa: OKVQAPaths | None = Field(None, description="OK-VQA files for evaluation")
    datasets: dict[str, DatasetPaths] = Field(
        default_factory=dict,
        description="Other datasets in the VQA format (e.g. vqav2), by name; a plan picks one with data.dataset",
    )
    models: ModelPaths = Field(default_factory=ModelPaths, description="Model directories")
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Trackers every run also logs to: TensorBoard event files, W&B offline (optional extras)",
    )

    @model_validator(mode="after")
    def _dataset_names(self) -> Workspace:
        for name in self.datasets:
            if name == DEFAULT_DATASET:
                raise ValueError(
                    f"datasets.{DEFAULT_DATASET}: '{DEFAULT_DATASET}' is the dataset of the [okvqa], [candidates] and "
                    "[features] tables; give this one another name"
                )
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"datasets.{name}: a dataset name holds letters, digits, '_' and '-' only")
        return self

    @property
    def is_bundled(self) -> bool:
        return not self.candidates and not self.datasets

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def runs_dir(self) -> Path:
        """The runs folder; $LEVER_RUNS, when set, overrides the workspace's `runs`."""
        return Path(os.environ[RUNS_ENV]) if os.environ.get(RUNS_ENV) else self.path(self.runs)

    @property
    def cache_dir(self) -> Path:
        return self.path(self.cache)

    @property
    def digest_memo(self) -> Path:
        """Where input files' SHA-256 digests are remembered between commands (lever.keys.file_digest)."""
        return self.cache_dir / "digests.json"

    @property
    def plans_dir(self) -> Path:
        return self.path(self.plans)

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_workspace(flag: str | Path | None = None) -> Workspace:
    """The flag, else $LEVER_WORKSPACE, else ./lever.toml, else the bundled benchmark."""
    origin = "--workspace"
    path: Path | None = Path(flag) if flag else None
    if path is None and os.environ.get(WORKSPACE_ENV):
        path, origin = Path(os.environ[WORKSPACE_ENV]), f"${WORKSPACE_ENV}"
    if path is None and Path(WORKSPACE_FILE).is_file():
        path, origin = Path(WORKSPACE_FILE), f"./{WORKSPACE_FILE}"
    if path is None:
        return Workspace()
    if path.is_dir():
        if not (path / WORKSPACE_FILE).is_file():
            raise LeverError(
                f"{origin} {path} is a folder without a {WORKSPACE_FILE}",
                hint=f"name a workspace file, e.g. {origin if origin.startswith('$') else '--workspace'} {path / WORKSPACE_FILE}",
            )
        path = path / WORKSPACE_FILE  # a folder holding the workspace file names it
    if not path.is_file():
        raise LeverError(f"workspace file {path} (from {origin}) does not exist")
    try:
        data = tomllib.loads(read_text(path, "workspace file"))
    except tomllib.TOMLDecodeError as err:
        raise LeverError(f"{path}: invalid TOML: {err}") from None
    for reserved in Workspace.SET_BY_LEVER:
        if reserved in data:
            raise LeverError(f"{path}: '{reserved}' is set by lever, not in the workspace file")
    try:
        return Workspace(root=path.resolve().parent, source=f"{path} (from {origin})", **data)
    except ValidationError as err:
        raise format_validation_error(err, str(path), Workspace) from None
