"""The `hf` backend: a transformers image-text-to-text model (Qwen2.5-VL by default).

Prompt: one user message alternating images and `Question:... Short answer:...`
texts (`build_prompt_parts`), rendered with the processor's chat template plus the
generation prompt. Generation is batched with LEFT padding, so every row's prompt
ends right where the new tokens start; only the new tokens are decoded. Images are
read one batch at a time (on CUDA, the next batch in a helper thread while this one generates).

transformers is imported inside functions, so `import lever.eval.hf` works without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lever.device import resolve_device
from lever.errors import LeverError
from lever.eval.backend import Request, Response, demo_answer
from lever.eval.protocol import DEFAULT, PromptProtocol, load_protocol

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
_HF_HINT = "pip install -e '.[hf]'"


def require_transformers() -> Any:
    """Import transformers (and check pillow), or raise a LeverError saying how to install them."""
    try:
        import PIL  # noqa: F401
        import transformers
    except ImportError as e:
        raise LeverError(f"the hf backend needs transformers and pillow ({e})", hint=_HF_HINT) from None
    return transformers


def _check_torchvision(err: Exception) -> None:
    """Raise a LeverError naming the package when `err` is transformers asking for a torchvision that is not installed."""
    if isinstance(err, ImportError) and "torchvision" in str(err).lower() and importlib.util.find_spec("torchvision") is None:
        raise LeverError(
            "the VLM's processor or model class needs torchvision, which is not installed",
            hint="pip install torchvision (the build that matches your torch version)",
        ) from None


def _one_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def load_processor(model_dir: Path) -> Any:
    """The VLM's processor (tokenizer, image processor, chat template) from a local folder, or a LeverError saying why not."""
    transformers = require_transformers()
    try:
        processor = transformers.AutoProcessor.from_pretrained(model_dir)
        ok = hasattr(processor, "image_processor") and getattr(processor, "chat_template", None)
        problem = None if ok else "it has no image processor or no chat template"
    except Exception as e:  # transformers raises many kinds here
        _check_torchvision(e)
        problem = _one_line(e)
    if problem:
        raise LeverError(
            f"could not load an image-text processor from {model_dir} ({problem})",
            hint="the folder needs the processor files (preprocessor config, tokenizer, chat template)",
        )
    return processor


def check_vlm(model_dir: Path) -> None:
    """Fail now, not after training, when the VLM's processor or model class cannot load (configs only, no weights)."""
    transformers = require_transformers()
    load_processor(model_dir)
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir)
        transformers.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)]  # imports the model class
    except KeyError:
        raise LeverError(
            f"{model_dir}: config.json describes a '{config.model_type}' model, which is not an image-text-to-text model",
            hint="point models.vlm at a vision-language checkpoint (e.g. Qwen2.5-VL-3B-Instruct)",
        ) from None
    except Exception as e:
        _check_torchvision(e)
        raise LeverError(f"{model_dir}: the model class cannot be loaded from config.json ({_one_line(e)})") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA, fp32 elsewhere (bf16 matmuls are slow or missing on many CPUs)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise LeverError(f"dtype {dtype!r} is not supported", hint=f"use 'auto' or one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def load_image(path: str) -> Any:
    """Open an image file as an RGB PIL image (raises OSError when missing or unreadable)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class _Ready:
    """A request ready to encode: its position, question id, prompt text and images."""

    pos: int
    question_id: int
    text: str
    images: list[Any]


_Prepared = tuple[list[_Ready], list[tuple[int, str]], Any]  # (ready, (position, error) of failed, inputs)


@functools.lru_cache(maxsize=256)
def _demo_image(path: str, stamp: tuple[int, int], protocol: PromptProtocol | None) -> Any:
    """A demonstration's image, read and sized once: the same train items recur across questions and shot counts.

    `stamp` (size, mtime) keys the file's content, so an image replaced on disk is read again. 256
    COCO-sized images hold about 230 MB; a query's own image is read directly.
    """
    image = load_image(path)
    return protocol.size_image(image) if protocol else image


def prompt_images(request: Request, protocol: PromptProtocol | None = None) -> list[Any]:
    """The request's images in prompt order (demos, then the query), sized by the protocol; OSError names the item."""
    images = []
    for role, item in [("demonstration", d) for d in request.demos] + [("query", request.query)]:
        if item.image is None:
            continue
        try:
            if role == "demonstration":
                st = os.stat(item.image)
                images.append(_demo_image(item.image, (st.st_size, st.st_mtime_ns), protocol))
            else:
                image = load_image(item.image)
                images.append(protocol.size_image(image) if protocol else image)
        except OSError as e:
            raise OSError(f"image of {role} {item.question_id} ({item.image}) unreadable: {e}") from None
    return images


def _check_positive(**values: int) -> None:
    for key, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise LeverError(f"{key} = {v!r} is not valid", hint=f"{key} must be an integer >= 1")


_LOADED: dict[tuple[str, ...], tuple[Any, Any]] = {}  # the one VLM this process holds, by what loaded it


def load_vlm(model_dir: Path, dtype: torch.dtype, attn_implementation: str, device: torch.device) -> tuple[Any, Any]:
    """(model in eval mode on `device`, processor), loaded once per process and reused.

    `lever run A B C` and multi-seed runs evaluate with the same VLM: it loads once. Only the
    latest is kept, so a command never holds two multi-GB models.
    """
    key = (str(model_dir.resolve()), str(dtype), attn_implementation, str(device))
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()
    transformers = require_transformers()
    processor = load_processor(model_dir)
    attn = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, **attn)
    except (ImportError, ValueError) as e:  # e.g. flash_attention_2 without the flash-attn package
        raise LeverError(
            f"could not load the VLM from {model_dir} with attn_implementation = {attn_implementation!r}: {e}",
            hint="use eval.attn_implementation = 'sdpa' (or 'auto'), or install what the message names",
        ) from None
    _LOADED[key] = (model.to(device).eval(), processor)
    return _LOADED[key]


class HFBackend:
    """Answers requests with a local transformers VLM; see the module docstring for the prompt.

    Generation: beam search with `num_beams` beams (greedy when 1), at most `max_new_tokens`
    new tokens, and the protocol's generation settings (`PromptProtocol.generation`: sampling
    off or as the model folder's generation config says, length penalty, min_new_tokens, eos);
    what neither sets comes from the checkpoint's generation config.
    """

    name = "hf"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 5,
        num_beams: int = 3,
        dtype: str = "auto",
        protocol: PromptProtocol | None = None,
        attn_implementation: str = "auto",
    ):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            what = "does not exist" if not model_dir.exists() else "has no config.json"
            raise LeverError(
                f"model directory {model_dir} {what}",
                hint="point it at a local transformers checkpoint (e.g. Qwen2.5-VL-3B-Instruct)",
            )
        _check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        model, processor = load_vlm(model_dir, dt, attn_implementation, dev)
        self._setup(model, processor, dev, batch_size, max_new_tokens, num_beams, protocol)
        self.model_dir = str(model_dir)
        self.dtype = str(dt).removeprefix("torch.")

    @classmethod
    def from_pretrained_objects(
        cls,
        model: Any,
        processor: Any,
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 5,
        num_beams: int = 3,
        protocol: PromptProtocol | None = None,
    ) -> HFBackend:
        """Wrap an already-built (model, processor) pair; the model keeps its dtype."""
        _check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        self = cls.__new__(cls)
        self._setup(model, processor, resolve_device(device), batch_size, max_new_tokens, num_beams, protocol)
        self.model_dir = None
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        return self

    def _setup(
        self,
        model: Any,
        processor: Any,
        device: torch.device,
        batch_size: int,
        max_new_tokens: int,
        num_beams: int,
        protocol: PromptProtocol | None,
    ) -> None:
        self.protocol = protocol or load_protocol(DEFAULT)
        self.device = device
        self.model = model.to(device).eval()
        self.processor = processor
        # Left padding: each row's prompt then ends at the last column, where generation starts.
        processor.tokenizer.padding_side = "left"
        self._tokenizer_lock = threading.Lock()
        self.prefetch = device.type == "cuda"
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams

    @property
    def settings(self) -> dict[str, Any]:
        """What the answers depend on (for result caching); batch size is left out on purpose."""
        return {
            "backend": self.name,
            "model": self.model_dir,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "protocol": self.protocol.identity(),
        }

    def render(self, request: Request) -> str:
        """The prompt text: the chat template over the protocol's messages, with the generation prompt."""
        return self.processor.apply_chat_template(self.protocol.messages(request), tokenize=False, add_generation_prompt=True)

    def encode(self, texts: list[str], images: list[Any]) -> Any:
        """Tokenise a batch (left-padded) with its images in prompt order; tensors on the device."""
        with self._tokenizer_lock:  # the fast tokenizer must not pad in one thread while decoding in another
            batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return batch.to(self.device)

    def generate_kwargs(self) -> dict[str, Any]:
        """Everything `model.generate` gets besides the encoded batch: the plan's beams and answer length, the
        tokenizer's pad token, and the protocol's generation settings."""
        tokenizer = self.processor.tokenizer
        return {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "pad_token_id": tokenizer.pad_token_id,
            **self.protocol.generation.generate_kwargs(tokenizer),
        }

    def generate(self, inputs: Any) -> list[str]:
        """Generate for one encoded batch; returns the decoded new tokens of each row."""
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generate_kwargs())  # [B, T_prompt + T_new]
        new = out[:, inputs["input_ids"].shape[1] :]  # [B, T_new]
        with self._tokenizer_lock:
            return self.processor.batch_decode(new, skip_special_tokens=True)

    def answer(self, requests: list[Request]) -> list[Response]:
        """One Response per request, in order; a question that fails is marked failed, the rest go on."""
        responses: list[Response | None] = [None] * len(requests)
        for ready, failed, inputs in self._prepared_batches(requests):
            for i, error in failed:
                responses[i] = Response("", failed=True, error=error)
            self._answer_batch(ready, inputs, responses)
        return [r if r is not None else Response("", failed=True, error="no answer") for r in responses]

    def gt_probs(self, requests: list[Request]) -> list[float | None]:
        """The model's probability of each query's ground-truth answer after its prompt (None where it fails).

        p = exp(sum_t log p(a_t | prompt, a_<t)) for a = the most frequent human answer (demo_answer),
        by teacher forcing: one forward pass per batch of `batch_size`, no generation.
        """
        out: list[float | None] = []
        for s in range(0, len(requests), self.batch_size):
            chunk = requests[s : s + self.batch_size]
            answers = [demo_answer(r.query) for r in chunk]
            try:
                texts = [self.render(r) + a for r, a in zip(chunk, answers)]
                inputs = self.encode(texts, [im for r in chunk for im in prompt_images(r, self.protocol)])
                with torch.inference_mode():
                    logits = self.model(**inputs).logits  # [B, T, V]
                ids = inputs["input_ids"][:, 1:]  # [B, T-1]: token t+1 is predicted at t
                tok = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)  # [B, T-1]
                with self._tokenizer_lock:
                    lens = [len(self.processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
                # Left padding: every row ends with its answer's tokens.
                out += [float(tok[b, -n:].sum().exp()) if n else 0.0 for b, n in enumerate(lens)]
            except Exception:  # a question the model cannot take: its answer will say why; no probability
                out += [None] * len(chunk)
        return out

    def _prepared_batches(self, requests: list[Request]) -> Iterator[_Prepared]:
        """Batches of `batch_size` requests, prepared (images read, prompts encoded) one at a time.

        With `prefetch` (default on CUDA) batch k+1 is prepared in a helper thread while
        batch k generates; on CPU that thread would only compete with torch's own threads.
        """
        n, bs = len(requests), self.batch_size
        chunks = [range(s, min(s + bs, n)) for s in range(0, n, bs)]
        if not self.prefetch:
            yield from (self._prepare(requests, c) for c in chunks)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(self._prepare, requests, c) for c in chunks[:1]]
            for k in range(len(chunks)):
                if k + 1 < len(chunks):
                    pending.append(pool.submit(self._prepare, requests, chunks[k + 1]))
                yield pending.pop(0).result()

    def _prepare(self, requests: list[Request], positions: range) -> _Prepared:
        """Render and load one batch: (ready items, (position, error) of failed ones, encoded inputs or None)."""
        ready, failed = [], []
        for i in positions:
            req = requests[i]
            try:
                ready.append(_Ready(i, req.query.question_id, self.render(req), prompt_images(req, self.protocol)))
            except (OSError, LeverError) as e:
                failed.append((i, f"question {req.query.question_id}: {e}"))
        try:
            inputs = self.encode([r.text for r in ready], [im for r in ready for im in r.images]) if ready else None
        except Exception:  # retried one question at a time in _answer_batch, to find the culprit
            inputs = None
        return ready, failed, inputs

    def _answer_batch(self, ready: list[_Ready], inputs: Any, responses: list[Response | None]) -> None:
        if not ready:
            return
        try:
            if inputs is None:
                inputs = self.encode([r.text for r in ready], [im for r in ready for im in r.images])
            raws = self.generate(inputs)
        except Exception as e:  # one bad question must not sink the whole evaluation
            if len(ready) > 1:  # find the culprit: retry one at a time
                for one in ready:
                    self._answer_batch([one], None, responses)
                return
            r = ready[0]
            responses[r.pos] = Response("", failed=True, error=f"question {r.question_id}: {type(e).__name__}: {e}")
            return
        for r, raw in zip(ready, raws):
            responses[r.pos] = Response(raw)
