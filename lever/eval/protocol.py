"""Prompt protocols: how a request becomes the VLM's chat input, and how its answer is scored.

A protocol is data: a TOML file with a system prompt, the demonstration and query
templates, how images are sized, and the VQA accuracy variant. lever ships two in
`lever/eval/protocols/`:

- `lever-plus` (the default): the original project's protocol. A system message with its
  instructions, then ONE user turn holding, per demonstration, its image and
  `Question:<q> Short answer:<a>`, then the query's image and `Question:<q> Short answer:`.
  Images are resized the way `qwen_vl_utils` does before the processor sees them
  (`smart_resize` to multiples of 28 pixels within [min_pixels, max_pixels]); answers are
  scored with the `lever-plus` metric.
- `lever`: the same turn without a system prompt of its own (the chat template's default
  system message), images sized by the processor alone, the `classic` metric.

A protocol also says how the VLM generates (its `[generation]` table, `GenerationSettings`):
`lever-plus` passes what the original passed to `model.generate` (length_penalty 0.0,
min_new_tokens 0, the tokenizer's eos token) and leaves sampling to the model folder's
`generation_config.json` in evaluation, but turns it off (do_sample=False) for the answers
`lever data generate` scores, as the original's generator does (`candidate_sampling`); `lever`
turns sampling off in both and leaves the rest to the model's generation config, as lever always did. The beam count and the answer length are
plan settings (`eval.num_beams`, `eval.max_new_tokens`).

A plan names one with `eval.protocol` (a shipped name or a path to a TOML file of the same
keys) and may override its `metric`, `min_pixels` and `max_pixels`. What a protocol
resolves to, its generation settings included, is part of the evaluation's cache key.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lever.errors import LeverError
from lever.spec.load import format_validation_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .backend import Request, build_prompt_parts

SHIPPED = Path(__file__).parent / "protocols"
DEFAULT = "lever-plus"
SIZE_FACTOR = 28  # Qwen2.5-VL: 14-pixel patches merged 2x2, so one visual token per 28x28 pixels
MAX_RATIO = 200  # qwen_vl_utils refuses images more elongated than this
VQAMetric = Literal["classic", "vqa-latest", "lever-plus"]  # the names of lever.eval.vqa.VQA_METRICS


class _GenerationFile(BaseModel):
    """The `[generation]` table of a protocol file: what `model.generate` gets besides the beams and the length."""

    model_config = ConfigDict(extra="forbid")

    length_penalty: float | None = Field(
        None, description="Beam search length penalty passed to generate; unset = the model's generation config"
    )
    min_new_tokens: int | None = Field(
        None, ge=0, description="Fewest new tokens before eos may end an answer; unset = the model's generation config"
    )
    eos: Literal["tokenizer", "config"] = Field(
        "config", description="tokenizer: eos_token_id = the tokenizer's eos token; config: the model's generation config"
    )
    sampling: Literal["model_config", "greedy"] = Field(
        "greedy",
        description="greedy: do_sample=False (greedy or beam search); model_config: do_sample, temperature, top_p and "
        "top_k as the model folder's generation_config.json sets them",
    )
    candidate_sampling: Literal["model_config", "greedy"] = Field(
        "greedy",
        description="The same choice for the answers `lever data generate` scores (the original's generator passes "
        "do_sample=False with its beams, where its evaluation leaves sampling to the model folder)",
    )


class _ProtocolFile(BaseModel):
    """The keys of a protocol TOML file (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", description="One line: what this protocol is")
    system_prompt: str = Field("", description="System message; empty = the chat template's default")
    demo_template: str = Field(description="Text after a demonstration's image; fields {question} and {answer}")
    query_template: str = Field(description="Text after the query's image; field {question}")
    image_sizing: Literal["processor", "qwen-vl-utils"] = Field(
        "processor", description="processor: images go to the processor as they are; qwen-vl-utils: smart_resize first"
    )
    min_pixels: int | None = Field(None, ge=1, description="qwen-vl-utils sizing: lower bound of height * width")
    max_pixels: int | None = Field(None, ge=1, description="qwen-vl-utils sizing: upper bound of height * width")
    metric: VQAMetric = Field("classic", description="VQA accuracy variant (lever.eval.vqa)")
    strip_text: Literal["spaces", "none"] = Field(
        "none",
        description="spaces: each text part loses its leading and trailing spaces (an empty one is left out), as the "
        "original's prepare_input strips them; none: the text parts as the templates make them",
    )
    generation: _GenerationFile = Field(
        default_factory=_GenerationFile, description="How the VLM generates; absent = greedy, the model's other settings"
    )

    @field_validator("demo_template", "query_template")
    @classmethod
    def _template(cls, v: str, info: Any) -> str:
        try:
            v.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"not a valid template ({e}); only the fields {{question}} and {{answer}} exist") from None
        if "{question}" not in v:
            raise ValueError("the template must contain {question}")
        if info.field_name == "query_template" and "{answer}" in v:
            raise ValueError("the query template cannot contain {answer}: the model writes the answer")
        return v


@dataclass(frozen=True)
class GenerationSettings:
    """How the VLM generates under a protocol (see `_GenerationFile` for each field)."""

    length_penalty: float | None = None
    min_new_tokens: int | None = None
    eos: str = "config"
    sampling: str = "greedy"
    candidate_sampling: str = "greedy"  # `lever data generate`'s sampling (`PromptProtocol.for_candidates`)

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        """The keyword arguments `model.generate` gets from these settings; what is left out comes from the
        model's generation config."""
        kw: dict[str, Any] = {}
        if self.sampling == "greedy":
            kw["do_sample"] = False
        if self.length_penalty is not None:
            kw["length_penalty"] = self.length_penalty
        if self.min_new_tokens is not None:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.eos == "tokenizer":
            kw["eos_token_id"] = tokenizer.eos_token_id
        return kw


@dataclass(frozen=True)
class PromptProtocol:
    """A resolved protocol; see the module docstring."""

    name: str
    system_prompt: str
    demo_template: str
    query_template: str
    image_sizing: str
    min_pixels: int | None
    max_pixels: int | None
    metric: str
    generation: GenerationSettings = GenerationSettings()
    strip_text: str = "none"

    def messages(self, request: Request) -> list[dict[str, Any]]:
        """The chat messages: an optional system message, then one user turn of images and texts."""
        strip = " " if self.strip_text == "spaces" else None
        parts = build_prompt_parts(request, self.demo_template, self.query_template, strip)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": parts}]

    def size_image(self, image: Any) -> Any:
        """The image the processor should see: resized as qwen_vl_utils does, or unchanged."""
        if self.image_sizing != "qwen-vl-utils":
            return image
        from PIL import Image

        width, height = image.size
        h, w = smart_resize(height, width, self.min_pixels or 4 * 28 * 28, self.max_pixels or 16384 * 28 * 28)
        return image if (w, h) == (width, height) else image.resize((w, h), Image.BICUBIC)

    def for_candidates(self) -> PromptProtocol:
        """The protocol `lever data generate` answers with: sampling as `candidate_sampling` says."""
        return replace(self, generation=replace(self.generation, sampling=self.generation.candidate_sampling))

    def identity(self) -> dict[str, Any]:
        """Everything the answers depend on (the name is only a label), the generation settings as a nested table.

        `candidate_sampling` is left out: it shapes only `data generate`'s answers, whose identity holds
        `for_candidates()`'s (its `sampling`), so evaluations keep their keys. `strip_text = "none"` (what every
        protocol did before the setting existed) is left out too, so those protocols keep their keys."""
        out = asdict(self)
        del out["generation"]["candidate_sampling"]
        if out["strip_text"] == "none":
            del out["strip_text"]
        return out

    def digest(self) -> str:
        """A short hash of `identity()`."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = SIZE_FACTOR) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, rescaled so h * w lies in [min_pixels, max_pixels].

    h = max(factor, round(height / factor) * factor), likewise w; when h * w > max_pixels both shrink
    by beta = sqrt(height * width / max_pixels) and round down; when below min_pixels both grow by
    sqrt(min_pixels / (height * width)) and round up. A 640x480 image becomes 644x476 (23 x 17 tokens).
    """
    if max(height, width) / max(1, min(height, width)) > MAX_RATIO:
        raise ValueError(f"image of {width}x{height} pixels is more elongated than {MAX_RATIO}:1")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def shipped_protocols() -> list[str]:
    """The names of the protocols lever ships (`lever/eval/protocols/*.toml`)."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def load_protocol(ref: str) -> PromptProtocol:
    """A shipped protocol by name, or a protocol TOML file by path; errors name the file and key."""
    path = SHIPPED / f"{ref}.toml" if ref in shipped_protocols() else Path(ref)
    if not path.is_file():
        raise LeverError(
            f"eval.protocol = {ref!r} is neither a shipped protocol nor a protocol file",
            hint=f"use one of {', '.join(shipped_protocols())}, or the path of a TOML file with the same keys",
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise LeverError(f"protocol file {path} cannot be read: {e}") from None
    try:
        spec = _ProtocolFile.model_validate(raw)
    except ValidationError as e:
        raise format_validation_error(e, f"protocol file {path}", _ProtocolFile) from None
    name = ref if path.parent == SHIPPED else str(path)
    fields = spec.model_dump(exclude={"description", "generation"})
    return PromptProtocol(name=name, **fields, generation=GenerationSettings(**spec.generation.model_dump()))


def resolve_protocol(spec: Any) -> PromptProtocol:
    """The plan's protocol (`eval.protocol`) with the plan's `metric`, `min_pixels`, `max_pixels` applied."""
    proto = load_protocol(spec.protocol)
    changes: dict[str, Any] = {}
    if spec.metric != "auto":
        changes["metric"] = spec.metric
    for key in ("min_pixels", "max_pixels"):
        if getattr(spec, key) is not None:
            if proto.image_sizing != "qwen-vl-utils":
                raise LeverError(
                    f"eval.{key} applies to image_sizing = 'qwen-vl-utils'; protocol {proto.name!r} lets the processor size images",
                    hint="use eval.protocol = 'lever-plus', or drop the setting",
                )
            changes[key] = getattr(spec, key)
    proto = replace(proto, **changes)
    if proto.min_pixels and proto.max_pixels and proto.min_pixels > proto.max_pixels:
        raise LeverError(f"min_pixels ({proto.min_pixels}) is above max_pixels ({proto.max_pixels})")
    return proto
