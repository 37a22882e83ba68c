"""One pretraining run: a LLaMA-style decoder from ``transformers.LlamaConfig`` trained from scratch on the byte
stream of :mod:`.data` for a fixed token budget, validation loss every ``eval_every`` steps.

Optimizers. ``adamw``: one AdamW for everything (weight decay on the 2-d weights, none on the RMSNorm gains).
``muon``: torch.optim.Muon for the hidden 2-d matrices of the blocks (attention q/k/v/o, MLP gate/up/down) with
Moonshot's RMS matching (``adjust_lr_fn="match_rms_adamw"``: the update's RMS matches AdamW's, so both arms share
one peak lr and weight decay), and AdamW for the embedding, the LM head and the norms - the usual split. Every
optimizer follows the same schedule: linear warmup to the peak lr, then cosine to ``min_lr_ratio`` x peak.

A spectral method (TempBalance with a policy or preset: an LLR or AlphaDecay arm) is attached through ``tb_kwargs``:
``TempBalance(model, optimizers, base_scheduler=schedulers, **tb_kwargs)``, stepped once per optimizer step; its
``spectral_seconds`` is recorded with the run's wall time.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import data as D

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ModelConfig:
    """The decoder: hidden size, blocks, heads, SwiGLU width, context."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 768
    seq_len: int = 256

    def llama(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=D.VOCAB, hidden_size=self.hidden, intermediate_size=self.ffn,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.heads, max_position_embeddings=self.seq_len,
                           tie_word_embeddings=False, attention_dropout=0.0, rms_norm_eps=1e-5)


@dataclass(frozen=True)
class TrainConfig:
    """The optimization: ``steps`` x ``batch`` windows of ``model.seq_len`` bytes (the token budget), peak lr and
    its schedule, weight decay, gradient clipping, evaluation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 50
    min_lr_ratio: float = 0.1
    steps: int = 1000
    batch: int = 16
    clip: float = 1.0
    eval_every: int = 50
    val_windows: int = 64
    final_windows: int = 256
    val_percent: float = 5.0

    @property
    def tokens(self) -> int:
        return self.steps * self.batch * self.model.seq_len

    def settings(self) -> dict[str, Any]:
        """Everything a run's result depends on besides (arm, seed)."""
        return asdict(self)


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """A freshly initialised LlamaForCausalLM (fp32), weights drawn from ``seed``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg.llama())


def hidden_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The blocks' 2-d weights (attention and MLP projections): Muon's part. Not the embedding nor the head."""
    return [(n, p) for n, p in model.named_parameters()
            if p.ndim == 2 and ".layers." in f".{n}" and (".self_attn." in n or ".mlp." in n)]


def param_counts(model: nn.Module) -> dict[str, int]:
    hidden = sum(p.numel() for _, p in hidden_matrices(model))
    total = sum(p.numel() for p in model.parameters())
    return dict(total=total, hidden_matrices=hidden, other=total - hidden)


def _adamw(named: list[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-d weights only (norm gains are not decayed)."""
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0})
              if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """``[adamw]`` or ``[muon, adamw]`` (Muon: the hidden matrices; AdamW: everything else)."""
    named = list(model.named_parameters())
    if cfg.optimizer == "adamw":
        return [_adamw(named, cfg)]
    if cfg.optimizer == "muon":
        hidden = hidden_matrices(model)
        ids = {id(p) for _, p in hidden}
        muon = torch.optim.Muon([p for _, p in hidden], lr=cfg.lr, weight_decay=cfg.weight_decay,
                                adjust_lr_fn="match_rms_adamw")
        return [muon, _adamw([(n, p) for n, p in named if id(p) not in ids], cfg)]
    raise ValueError(f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}")


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The schedule at optimizer step ``step`` (0-based): (step + 1) / warmup during warmup, then cosine from 1 to
    ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedulers(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig) -> list:
    return [torch.optim.lr_scheduler.LambdaLR(
        o, lambda t: lr_multiplier(t, cfg.warmup, cfg.steps, cfg.min_lr_ratio)) for o in optimizers]


def batch_order(seed: int) -> torch.Generator:
    """The generator of a run's batch offsets: its own stream per seed (not the init's), shared by every arm."""
    return torch.Generator().manual_seed(10_000 + seed)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 16) -> float:
    """Mean next-byte cross-entropy (nats) over every predicted byte of the windows."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch):
        logits = model(input_ids=x[i:i + batch]).logits
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch].reshape(-1),
                                 reduction="sum").item()
        count += y[i:i + batch].numel()
    model.train(was)
    return total / count


@dataclass
class RunResult:
    """A finished run: the validation curve (step, tokens, loss in nats), the final loss on the larger validation
    set, perplexities (per byte), bits per byte, timings and the spectral method's history."""

    curve: list[dict[str, float]]
    final_loss: float
    final_ppl: float
    final_bpb: float
    train_loss_last: float
    seconds: float
    cpu_seconds: float
    train_seconds: float
    eval_seconds: float
    spectral_seconds: float
    refreshes: int
    tb_history: list[dict[str, Any]]
    params: dict[str, int]
    tokens: int
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lean(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A refresh record without the per-matrix alphas (unit means and factors are kept)."""
    return [{k: v for k, v in h.items() if k != "alphas"} for h in history]


def train_run(corpus: D.Corpus, cfg: TrainConfig, seed: int, tb_kwargs: dict[str, Any] | None = None,
              progress: Callable[[int], None] | None = None) -> RunResult:
    """Train one model from ``seed`` (its initialisation and its batch order: the same for every arm)."""
    start, cpu0 = time.perf_counter(), time.process_time()
    model = build_model(cfg.model, seed)
    model.train()
    opts = build_optimizers(model, cfg)
    scheds = build_schedulers(opts, cfg)
    tb = None
    if tb_kwargs is not None:
        from tempbalance import TempBalance

        tb = TempBalance(model, opts if len(opts) > 1 else opts[0],
                         base_scheduler=scheds if len(scheds) > 1 else scheds[0], **tb_kwargs)
    gen = batch_order(seed)
    vx, vy = D.val_windows(corpus.val, cfg.val_windows, cfg.model.seq_len)
    params = [p for g in (gr for o in opts for gr in o.param_groups) for p in g["params"]]
    curve: list[dict[str, float]] = []
    eval_s = 0.0
    loss_v = math.nan
    diverged = False

    def record(step: int) -> None:
        nonlocal eval_s
        t0 = time.perf_counter()
        loss = evaluate(model, vx, vy)
        eval_s += time.perf_counter() - t0
        curve.append(dict(step=step, tokens=step * cfg.batch * cfg.model.seq_len, val_loss=loss,
                          val_ppl=math.exp(min(loss, 50.0)),
                          train_loss=loss_v if math.isfinite(loss_v) else None))

    try:
        record(0)
        for step in range(cfg.steps):
            x, y = D.train_batch(corpus.train, cfg.batch, cfg.model.seq_len, gen)
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            for o in opts:
                o.step()
            if tb is not None:
                tb.step()
            else:
                for s in scheds:
                    s.step()
            loss_v = loss.item()
            if not math.isfinite(loss_v):
                diverged = True
                break
            if progress is not None:
                progress(1)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                record(step + 1)
        t0 = time.perf_counter()
        fx, fy = D.val_windows(corpus.val, cfg.final_windows, cfg.model.seq_len)
        final = evaluate(model, fx, fy) if not diverged else math.inf
        eval_s += time.perf_counter() - t0
        spectral = float(tb.spectral_seconds) if tb is not None else 0.0
        history = _lean(tb.history) if tb is not None else []
    finally:
        if tb is not None:
            tb.close()
    seconds = time.perf_counter() - start
    return RunResult(curve=curve, final_loss=final, final_ppl=math.exp(min(final, 50.0)), final_bpb=final / LN2,
                     train_loss_last=loss_v, seconds=seconds, cpu_seconds=time.process_time() - cpu0,
                     train_seconds=seconds - eval_s, eval_seconds=eval_s, spectral_seconds=spectral,
                     refreshes=len(history), tb_history=history, params=param_counts(model), tokens=cfg.tokens,
                     diverged=diverged)
