"""The simulated VQA world: latent items, their 512-d features, questions and 10 human answers each.

Generative model (docs/benchmark.md has the full story):
    topic centre  c_t ~ N(0, I/d_lat), normalised             t = 1..T
    item latent   h_i = normalise(c_{z_i} + spread * e_i)       z_i ~ U(T), e_i ~ N(0, I/d_lat)
    answer type   a_i = dominant(z_i) with prob coupling, else U(types)
    quality       q_i ~ N(0, 1), or harmful_quality with prob harmful_share
    image stand-in x_i = normalise(common*mu + P h_i + tv*E[a_i] + qv*q_i*w + noise*n_i)
    feature       f_i = normalise(x_i + t_i), t_i the question text's embedding (item_features "both", the default;
                  as CLIP's item features), or x_i ("image")
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .config import GENERATOR_VERSION, BenchConfig
from .text import ANSWER_TYPES, near_miss, question_embedding, text_similarity, vocabulary, vqa_accuracy

N_WRONG = 3  # wrong answer options per question
N_DISTINCT_PROBS = [0.2, 0.35, 0.3, 0.15]  # how many distinct human answers a question has (1..4)
TOPIC_FAVOURITES = 3  # answers a topic prefers per answer type
FAVOURITE_PROB = 0.7  # chance the majority answer is one of the topic's favourites


@dataclass
class Split:
    """One split of the world: item records, features [n, dim] and the latent tensors the simulated VLM reads."""

    items: list[dict[str, Any]]
    features: torch.Tensor  # [n, dim] float32, L2-normalised rows
    latent: dict[str, torch.Tensor]


class Options(NamedTuple):
    """Answer options of a question: correct ones (by annotator count) then wrong ones."""

    texts: list[str]
    correct_pmf: list[float]  # the model's choice among the correct options, given it is right
    answers: tuple[str, ...]  # the 10 human answers


@dataclass
class World:
    train: Split
    val: Split
    vocab: list[str]
    params: dict[str, Any]  # the VLM's knobs and hash salt
    test: Split | None = None  # the held-out questions (make_world(held_out=True))

    def test_state(self) -> dict[str, Any]:
        """The held-out split's latent tensors, in their own file: the world file of train and val stays as it was."""
        assert self.test is not None
        return {"version": GENERATOR_VERSION, "test": self.test.latent}

    def vlm_state(self) -> dict[str, Any]:
        """What the simulated VLM needs, as plain tensors/lists (loads with torch.load(weights_only=True))."""
        return {
            "version": GENERATOR_VERSION,
            "params": self.params,
            "vocab": self.vocab,
            "train": self.train.latent,
            "val": self.val.latent,
        }


def make_world(cfg: BenchConfig, held_out: bool = False) -> World:
    """Draw the whole world from `cfg.seed`: same settings, same world. With `held_out`, also the `test` split:
    n_val more questions on images of neither train nor val, drawn after everything else, so that train, val and the
    VLM's salt are the same bits with or without it."""
    g = torch.Generator().manual_seed(cfg.seed)
    types = list(ANSWER_TYPES)
    n_types, d_lat = len(types), cfg.latent_dim

    centres = F.normalize(torch.randn(cfg.n_topics, d_lat, generator=g), dim=-1)  # [T, d_lat]
    dominant = torch.randperm(cfg.n_topics, generator=g) % n_types  # [T] each type dominates some topics
    n_vocab = len(ANSWER_TYPES[types[0]][0])
    favourites = torch.rand(cfg.n_topics, n_types, n_vocab, generator=g).argsort(-1)[..., :TOPIC_FAVOURITES]

    # Directions in feature space: shared mean, answer types, quality; P maps h to features.
    mu = F.normalize(torch.randn(cfg.dim, generator=g), dim=0)  # [dim]
    type_dirs = F.normalize(torch.randn(n_types, cfg.dim, generator=g), dim=-1)  # [A, dim]
    w = torch.randn(cfg.dim, generator=g)
    w = F.normalize(w - (w @ mu) * mu, dim=0)  # quality direction, orthogonal to the mean
    proj = torch.randn(d_lat, cfg.dim, generator=g) / cfg.dim**0.5  # [d_lat, dim], ||h P|| ~ 1

    train_ids, val_ids = _ids(cfg.n_train, cfg.n_val, g)
    vocab = vocabulary()
    word_id = {word: i for i, word in enumerate(vocab)}

    def split(n: int, ids_: list[tuple[int, int]]) -> Split:
        topic = torch.randint(cfg.n_topics, (n,), generator=g)  # [n]
        h = F.normalize(centres[topic] + cfg.topic_spread * torch.randn(n, d_lat, generator=g) / d_lat**0.5, dim=-1)
        coupled = torch.rand(n, generator=g) < cfg.type_topic_coupling
        atype = torch.where(coupled, dominant[topic], torch.randint(n_types, (n,), generator=g))
        quality = torch.randn(n, generator=g)
        quality[torch.rand(n, generator=g) < cfg.harmful_share] = cfg.harmful_quality
        difficulty = cfg.difficulty_sd * torch.randn(n, generator=g)
        difficulty += cfg.unknown_penalty * (torch.rand(n, generator=g) < cfg.unknown_share).float()
        sensitivity = torch.exp(cfg.sensitivity_sd * torch.randn(n, generator=g))
        noise = torch.randn(n, cfg.dim, generator=g) / cfg.dim**0.5
        x = (
            cfg.feat_common * mu
            + h @ proj
            + cfg.type_visibility * type_dirs[atype]
            + cfg.quality_visibility * quality[:, None] * w
            + cfg.feat_noise * noise
        )
        features = F.normalize(x, dim=-1).float()  # [n, dim]

        fav = favourites[topic, atype].tolist()  # [n, TOPIC_FAVOURITES]
        u = torch.rand(n, 5, generator=g).tolist()  # per-item uniforms for the text below
        word_perm = torch.rand(n, n_vocab, generator=g).argsort(-1).tolist()
        cut_perm = torch.rand(n, 9, generator=g).argsort(-1).tolist()
        annot_perm = torch.rand(n, 10, generator=g).argsort(-1).tolist()
        items, rows = [], []
        for i in range(n):
            item, row = _question(i, ids_[i], types[int(atype[i])], fav[i], u[i], word_perm[i], cut_perm[i], annot_perm[i])
            items.append(item)
            rows.append(row)
        if cfg.item_features == "both":  # as CLIP's item features: the image's and the question's, normalised sum
            features = F.normalize(features + question_embedding([it["question"] for it in items], cfg.dim), dim=-1)
        latent = {
            "h": h.float(),
            "type": atype,
            "quality": quality.float(),
            "difficulty": difficulty.float(),
            "sensitivity": sensitivity.float(),
            **_option_tensors(rows, word_id),
        }
        return Split(items=items, features=features, latent=latent)

    train = split(cfg.n_train, train_ids)
    val = split(cfg.n_val, val_ids)
    salt = int(torch.randint(2**31 - 1, (1,), generator=g))
    params = {
        k: getattr(cfg, k)
        for k in (
            "noise_scale",
            "base_logit",
            "relevance_weight",
            "type_bonus",
            "answer_bonus",
            "quality_weight",
            "redundancy_weight",
            "redundancy_threshold",
            "position_decay",
            "shot_bias",
        )
    }
    params["salt"] = salt
    test = split(cfg.n_val, _held_out_ids(cfg.n_val, train_ids + val_ids, g)) if held_out else None
    return World(train=train, val=val, vocab=vocab, params=params, test=test)


def _held_out_ids(n: int, used: list[tuple[int, int]], g: torch.Generator) -> list[tuple[int, int]]:
    """(image_id, question_id) of n held-out questions: images neither train nor val uses, ids increasing."""
    taken = {image for image, _ in used}
    pool = torch.randperm(max(600_000, 4 * (len(used) + n)), generator=g) + 1
    image = torch.tensor([i for i in pool.tolist() if i not in taken][:n]).sort().values
    digit = torch.randint(10, (n,), generator=g)
    return list(zip(image.tolist(), (image * 10 + digit).tolist()))


def _ids(n_train: int, n_val: int, g: torch.Generator) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(image_id, question_id) per item for train and val: distinct images, ids increasing with the index.

    question_id = 10 * image_id + digit, as in OK-VQA (e.g. 2971475 for image 297147).
    """
    n = n_train + n_val
    image = torch.randperm(max(600_000, 4 * n), generator=g)[:n] + 1
    digit = torch.randint(10, (n,), generator=g)
    train, val = image[:n_train].sort().values, image[n_train:].sort().values

    def pairs(im: torch.Tensor, dg: torch.Tensor) -> list[tuple[int, int]]:
        return list(zip(im.tolist(), (im * 10 + dg).tolist()))

    return pairs(train, digit[:n_train]), pairs(val, digit[n_train:])


def _question(
    index: int,
    ids: tuple[int, int],
    atype: str,
    fav: list[int],
    u: list[float],
    word_perm: list[int],
    cut_perm: list[int],
    annot_perm: list[int],
) -> tuple[dict[str, Any], Options]:
    """Item record and answer options of one question, from pre-drawn uniforms and permutations."""
    words = ANSWER_TYPES[atype][0]
    # Majority answer: usually one of the topic's favourites, so same-topic items share answers.
    major = fav[int(u[0] * len(fav))] if u[1] < FAVOURITE_PROB else int(u[2] * len(words))
    n_distinct = 1 + sum(u[3] > c for c in accumulate(N_DISTINCT_PROBS[:-1]))
    cuts = sorted(c + 1 for c in cut_perm[: n_distinct - 1])  # distinct cut points among 1..9
    edges = [0, *cuts, 10]
    counts = sorted((b - a for a, b in zip(edges, edges[1:])), reverse=True)  # annotators per answer, largest first
    others = [j for j in word_perm if j != major]
    chosen = [words[major]] + [words[j] for j in others[: n_distinct - 1]]
    ordered = [w for w, c in zip(chosen, counts) for _ in range(c)]
    answers = [ordered[j] for j in annot_perm]  # annotators in random order

    wrong = [near_miss(words[major])] + [words[j] for j in others[n_distinct - 1 :]]
    wrong = [w for w in dict.fromkeys(wrong) if w not in chosen][:N_WRONG]
    pmf = [c / 10 for c in counts]  # when right, the model gives an answer as often as annotators did

    template = ANSWER_TYPES[atype][1]
    item = {
        "index": index,
        "question_id": ids[1],
        "image_id": ids[0],
        "question": template[int(u[4] * len(template))],
        "answers": answers,
    }
    return item, Options(chosen + wrong, pmf, tuple(answers))


def _option_tensors(rows: list[Options], word_id: dict[str, int]) -> dict[str, torch.Tensor]:
    """Pad the options of every question into [n, M] tensors: vocab ids, VQA accuracy, text similarity, cdf."""
    m = max(len(r.texts) for r in rows)
    n = len(rows)
    options = torch.full((n, m), -1, dtype=torch.long)
    acc = torch.zeros(n, m)
    rel = torch.zeros(n, m)
    cdf = torch.ones(n, m)  # cumulative pmf over the correct options, 1 beyond them
    n_correct = torch.zeros(n, dtype=torch.long)
    n_options = torch.zeros(n, dtype=torch.long)
    for i, (opts, pmf, answers) in enumerate(rows):
        nc = len(pmf)
        options[i, : len(opts)] = torch.tensor([word_id[o] for o in opts])
        acc[i, : len(opts)] = torch.tensor([vqa_accuracy(o, answers) for o in opts])
        rel[i, : len(opts)] = torch.tensor([text_similarity(o, answers) for o in opts])
        cdf[i, : nc - 1] = torch.tensor(list(accumulate(pmf[:-1])))
        n_correct[i], n_options[i] = nc, len(opts)
    return {
        "options": options,
        "option_acc": acc,
        "option_rel": rel,
        "correct_cdf": cdf,
        "n_correct": n_correct,
        "n_options": n_options,
        "answer": options[:, 0].clone(),
    }
