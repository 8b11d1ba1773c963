"""The `hf` backend: a transformers image-text-to-text model (Qwen2.5-VL by default).

Prompt: one user message alternating images and `Question:... Short answer:...`
texts (`build_prompt_parts`), rendered with the processor's chat template plus the
generation prompt; only the new tokens are decoded.

The fast path (models of the Qwen2-VL family, whose forward takes precomputed image features):

- image work once: each image's vision-encoder output comes from a per-model cache
  (`lever.eval.image_cache`), so a recurring image is neither read, preprocessed nor encoded again;
  the prompt's tokens are built from the rendered text with as many image tokens as the cached
  grid says (what the processor would do, without its pixels);
- no padding: prompts are grouped by token count and a batch holds prompts of ONE length
  (at most `batch_size`), so attention never needs a padding mask (its slow path on CPU);
- one prefill per prompt: the prompt less its last token runs once; its KV cache is then copied
  to the `num_beams` beams and `model.generate` continues from it (generate alone would run the
  whole prompt once per beam). The ground truth's probability (`gt_probs`, `answer_with_gt_probs`)
  is read from the same prefill: the answer's tokens run on top of the cache, which is then cut back.

Other models take the plain path: batches of `batch_size` in request order, LEFT padded, images
read per batch (on CUDA, the next batch in a helper thread while this one generates).

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
from lever.eval.backend import Item, Request, Response, demo_answer
from lever.eval.image_cache import DEFAULT_MB, ImageFeatureCache, cache_for
from lever.eval.protocol import DEFAULT, PromptProtocol, load_protocol
from lever.keys import file_digest

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
        image_cache_mb: float = DEFAULT_MB,
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
        self._setup(model, processor, dev, batch_size, max_new_tokens, num_beams, protocol, image_cache_mb)
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
        image_cache_mb: float = DEFAULT_MB,
    ) -> HFBackend:
        """Wrap an already-built (model, processor) pair; the model keeps its dtype."""
        _check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        self = cls.__new__(cls)
        self._setup(model, processor, resolve_device(device), batch_size, max_new_tokens, num_beams, protocol, image_cache_mb)
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
        image_cache_mb: float = DEFAULT_MB,
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
        # The fast path (module docstring) needs a forward that takes precomputed image features and a
        # processor that says how many tokens an image grid becomes (the Qwen2-VL family).
        self.fast = _supports_fast_path(model, processor)
        self.images: ImageFeatureCache = cache_for(self.model, image_cache_mb)
        self._pixels_key = (
            self.protocol.image_sizing,
            self.protocol.min_pixels,
            self.protocol.max_pixels,
            _settings_of(processor.image_processor) if self.fast else None,
        )

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
        if self.fast:
            return self._run(requests, answers=True, gt=False)[0]
        responses: list[Response | None] = [None] * len(requests)
        for ready, failed, inputs in self._prepared_batches(requests):
            for i, error in failed:
                responses[i] = Response("", failed=True, error=error)
            self._answer_batch(ready, inputs, responses)
        return [r if r is not None else Response("", failed=True, error="no answer") for r in responses]

    def answer_with_gt_probs(self, requests: list[Request]) -> tuple[list[Response], list[float | None]]:
        """`answer` and `gt_probs` of the same requests, from one prefill per prompt on the fast path."""
        if self.fast:
            return self._run(requests, answers=True, gt=True)
        return self.answer(requests), self.gt_probs(requests)

    def gt_probs(self, requests: list[Request]) -> list[float | None]:
        """The model's probability of each query's ground-truth answer after its prompt (None where it fails).

        p = exp(sum_t log p(a_t | prompt, a_<t)) for a = the most frequent human answer (demo_answer),
        by teacher forcing: one forward pass per batch of `batch_size`, no generation.
        """
        if self.fast:
            return self._run(requests, answers=False, gt=True)[1]
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

    # ----------------------------------------------------------------------------------------- fast path

    def cache_summary(self) -> str:
        """The image-feature cache's line for the log (uses, distinct images encoded, hit rate)."""
        return self.images.summary()

    def _image_features(self, item: Item, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid [3], vision-encoder output [tokens, d]) of an item's image, from the cache or computed and kept.

        OSError names the item when the file is missing or unreadable."""
        try:
            digest = file_digest(Path(item.image))
            key = (digest, self._pixels_key)
            hit = self.images.get(key)
            if hit is not None:
                return hit
            image = self.protocol.size_image(load_image(item.image))
        except (OSError, LeverError) as e:
            raise OSError(f"image of {role} {item.question_id} ({item.image}) unreadable: {e}") from None
        px = self.processor.image_processor(images=[image], return_tensors="pt")
        grid = px["image_grid_thw"].to(self.device)  # [1, 3]
        with torch.inference_mode():
            out = self.model.get_image_features(px["pixel_values"].to(self.device), grid, return_dict=True)
        features = out.pooler_output[0]  # [grid.prod() / merge^2, d]
        self.images.put(key, grid[0], features)
        return grid[0], features

    def _prompt(self, request: Request, gt: bool) -> _Prompt:
        """Render, tokenise and attach image features: the processor's input_ids, without its pixels."""
        text = self.render(request)
        roles = [("demonstration", d) for d in request.demos] + [("query", request.query)]
        grids, features = [], []
        for role, item in roles:
            if item.image is not None:
                grid, feats = self._image_features(item, role)
                grids.append(grid)
                features.append(feats)
        token = self.processor.image_token
        pieces = text.split(token)
        if len(pieces) != len(features) + 1:
            raise LeverError(f"the prompt has {len(pieces) - 1} image tokens for {len(features)} images")
        merge = self.processor.image_processor.merge_size**2
        expanded = pieces[0] + "".join(token * (int(g.prod()) // merge) + p for g, p in zip(grids, pieces[1:]))
        with self._tokenizer_lock:
            ids = self.processor.tokenizer(expanded)["input_ids"]
            answer = None
            if gt and request.query.answers:  # no human answer: no probability, but the question is still answered
                answer = self.processor.tokenizer(demo_answer(request.query), add_special_tokens=False)["input_ids"]
        return _Prompt(ids, grids, features, answer)

    def _run(self, requests: list[Request], answers: bool, gt: bool) -> tuple[list[Response], list[float | None]]:
        """The fast path: (responses, ground-truth probabilities) per request, in order; see the module docstring."""
        responses: list[Response | None] = [None] * len(requests)
        probs: list[float | None] = [None] * len(requests)
        prompts: dict[int, _Prompt] = {}
        for i, req in enumerate(requests):
            try:
                prompts[i] = self._prompt(req, gt)
            except Exception as e:  # a missing image, a demonstration without answers: only this question fails
                why = str(e) if isinstance(e, (OSError, LeverError)) else f"{type(e).__name__}: {e}"
                responses[i] = Response("", failed=True, error=f"question {req.query.question_id}: {why}")
        for group in self._groups(prompts):
            self._run_group(group, prompts, requests, answers, gt, responses, probs)
        out = [r if r is not None else Response("", failed=True, error="no answer") for r in responses]
        return out, probs

    def _groups(self, prompts: dict[int, _Prompt]) -> list[list[int]]:
        """Positions grouped into batches of one token count each (no padding), at most `batch_size` long."""
        order = sorted(prompts, key=lambda i: len(prompts[i].ids))  # stable: request order within a length
        groups: list[list[int]] = []
        for i in order:
            g = groups[-1] if groups else None
            if g and len(g) < self.batch_size and len(prompts[g[0]].ids) == len(prompts[i].ids):
                g.append(i)
            else:
                groups.append([i])
        return groups

    def _run_group(
        self,
        group: list[int],
        prompts: dict[int, _Prompt],
        requests: list[Request],
        answers: bool,
        gt: bool,
        responses: list[Response | None],
        probs: list[float | None],
    ) -> None:
        try:
            raws, ps = self._generate_group([prompts[i] for i in group], answers, gt)
        except Exception as e:  # one bad question must not sink the whole evaluation
            if len(group) > 1:  # find the culprit: one at a time
                for i in group:
                    self._run_group([i], prompts, requests, answers, gt, responses, probs)
                return
            qid = requests[group[0]].query.question_id
            responses[group[0]] = Response("", failed=True, error=f"question {qid}: {type(e).__name__}: {e}")
            return
        for k, i in enumerate(group):
            if answers:
                responses[i] = Response(raws[k])
            if gt:
                probs[i] = ps[k]

    def _generate_group(self, prompts: list[_Prompt], answers: bool, gt: bool) -> tuple[list[str], list[float | None]]:
        """One prefill for a batch of prompts of one length, then the ground truth's probability and/or beam search."""
        from transformers import DynamicCache
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        dev = self.device
        ids = torch.tensor([p.ids for p in prompts], device=dev)  # [B, T]
        B, T = ids.shape
        features = [f for p in prompts for f in p.features]
        mm, grid, types = None, None, None
        if features:
            mm = {"image": BaseModelOutputWithPooling(pooler_output=features)}
            grid = torch.stack([g for p in prompts for g in p.grids])  # [images, 3]
            types = (ids == self.processor.image_token_id).long()  # [B, T] 1 on image tokens
        cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        raws: list[str] = []
        ps: list[float | None] = [None] * B
        with torch.inference_mode():
            # The prompt less its last token, once: generate's first step then runs that token per beam.
            self.model.model.rope_deltas = None  # the 3D positions' offsets are set from this prompt
            self.model(
                input_ids=ids[:, :-1],
                image_grid_thw=grid,
                mm_token_type_ids=None if types is None else types[:, :-1],
                mm_encoder_outputs=mm,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            if self.model.model.rope_deltas is None:  # no image: text positions
                self.model.model.rope_deltas = torch.zeros(B, 1, dtype=torch.long, device=dev)
            if gt:
                ps = self._gt_from_cache(ids, prompts, cache)
                cache.crop(T - 1 - cache.get_seq_length())  # back to the prompt less its last token
            if answers:
                if self.num_beams > 1:
                    cache.batch_repeat_interleave(self.num_beams)  # [B * beams, ...]: beam b of row r at r * beams + b
                out = self.model.generate(input_ids=ids, cache=cache, **self.generate_kwargs())  # [B, T + T_new]
                with self._tokenizer_lock:
                    raws = self.processor.batch_decode(out[:, T:], skip_special_tokens=True)
        return raws, ps

    def _gt_from_cache(self, ids: torch.Tensor, prompts: list[_Prompt], cache: Any) -> list[float | None]:
        """p(answer | prompt) per row, by teacher forcing on top of the prefill's cache: the prompt's last token
        and the answer's tokens run once (rows right-padded: causal attention never looks right)."""
        pad = self.processor.tokenizer.pad_token_id or 0
        seqs = [[int(ids[b, -1])] + (p.answer or []) for b, p in enumerate(prompts)]
        width = max(len(s) for s in seqs)
        ext = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=ids.device)  # [B, 1 + A]
        logits = self.model(input_ids=ext, cache=cache, use_cache=True).logits  # [B, 1 + A, V]
        logp = logits.float().log_softmax(-1)
        out: list[float | None] = []
        for b, p in enumerate(prompts):
            if p.answer is None:
                out.append(None)
                continue
            n = len(p.answer)
            if not n:
                out.append(0.0)
                continue
            target = torch.tensor(p.answer, device=ids.device)  # token t+1 is predicted at t
            out.append(float(logp[b, :n].gather(-1, target[:, None]).sum().exp()))
        return out


@dataclass
class _Prompt:
    """One request, tokenised as the processor would, with its images' grids and features in prompt order."""

    ids: list[int]
    grids: list[torch.Tensor]  # [3] each
    features: list[torch.Tensor]  # [tokens, d] each
    answer: list[int] | None  # the ground-truth answer's tokens (gt_probs), else None


def _settings_of(image_processor: Any) -> str:
    """The image processor's settings as text (what its pixels depend on); a value JSON cannot hold is named by type."""
    import json

    return json.dumps(image_processor.to_dict(), sort_keys=True, default=lambda v: type(v).__name__)


def _supports_fast_path(model: Any, processor: Any) -> bool:
    """Whether the model takes precomputed image features and the processor says how many tokens a grid becomes."""
    import inspect

    try:
        takes = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return (
        takes
        and hasattr(model, "get_image_features")
        and hasattr(getattr(model, "model", None), "rope_deltas")
        and isinstance(getattr(processor, "image_token", None), str)
        and getattr(processor, "image_token_id", None) is not None
        and isinstance(getattr(getattr(processor, "image_processor", None), "merge_size", None), int)
    )
