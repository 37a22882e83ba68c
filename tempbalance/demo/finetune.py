"""Fine-tune an HF encoder for binary sentence classification, with or without TempBalance, on CPU.

One :class:`Encoder` holds the pretrained model and tokenizer, loaded once; every run starts from a copy of it
with a classification head initialised from the run's seed, so the FT and TB arms of a seed share the head, the
data and the batch order (a paired comparison). The recipe is the papers' RoBERTa one: AdamW with weight decay
0.1, gradient clipping at norm 1, 6 % linear warmup then linear decay, sentences truncated at 128 tokens. They are
tokenised once per run; each batch is cut to its longest sentence. Evaluation sorts sentences by length and
reports accuracy, macro-F1 and balanced accuracy (a constant classifier scores 0.5 balanced accuracy and at most
0.5 macro-F1, whatever the class ratio).
"""
from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .data import TextSet

MAX_LENGTH = 128
EVAL_BATCH = 32  # sorted by length: small batches carry little padding (and ran faster than 128 on one thread)
PRECISIONS = ("fp32", "bf16")
CADENCES = ("epoch", "adaptive")


def batch_size_for(n: int) -> int:
    """The batch size of the low-data regime: 4 below 64 sentences, 8 below 256, else 16 (within the papers'
    grid {4, 8, 16, 32} for tiny SST-2 subsets)."""
    return 4 if n < 64 else 8 if n < 256 else 16


@dataclass
class TBSettings:
    """TempBalance options of the demo: the package defaults (block units, TBSigmoid s_lo=2, s_hi=1, tau=10,
    xmin at the median) with one analysis before training and one after every epoch (``cadence="epoch"``, the
    papers' cadence) or :class:`~tempbalance.cadence.Adaptive` with its defaults (``cadence="adaptive"``)."""

    unit: str = "block"
    s_lo: float = 2.0
    s_hi: float = 1.0
    tau: float = 10.0
    xmin_pos: float = 2.0
    cadence: str = "epoch"

    def __post_init__(self):
        if self.cadence not in CADENCES:
            raise ValueError(f"cadence must be one of {CADENCES}, got {self.cadence!r}")

    def kwargs(self) -> dict[str, Any]:
        return dict(unit=self.unit, mapping="sigmoid", s_lo=self.s_lo, s_hi=self.s_hi, tau=self.tau,
                    xmin_pos=self.xmin_pos, interval=None if self.cadence == "epoch" else "adaptive")


# the papers' published setting for the smallest SST-2 ratio (0.02 %): s = 1.25 on both sides, xmin at N / 1.5
PAPER_TB = TBSettings(s_lo=1.25, s_hi=1.25, xmin_pos=1.5)


@dataclass
class RunConfig:
    """One fine-tuning run. ``batch_size=None`` picks :func:`batch_size_for` the training size;
    ``max_grad_norm=None`` turns clipping off; ``precision="bf16"`` runs forward and backward under CPU bf16
    autocast (weights, gradients and optimizer state stay float32; ~1.7x faster on CPUs with AVX512-BF16, slow
    without). ``block_lr_scale`` (FT only) multiplies the lr of every parameter of a block, by block name (e.g.
    ``{"bert.encoder.layer.0": 0.5}``), for the whole run: a fixed per-block profile, the control for TempBalance
    (which derives such a profile from the spectra); blocks not named keep the base lr. ``layer_decay`` (FT
    only) trains with layer-wise lr decay at that rate (:func:`tempbalance.training.llrd.layer_decay_groups`: block ``l``
    of ``L`` at ``lr * decay ** (L - 1 - l)``, embeddings ``decay ** L``, head 1x), the practitioners' baseline."""

    lr: float
    epochs: int = 10
    seed: int = 0
    tempbalance: bool = False
    batch_size: int | None = None
    warmup_ratio: float = 0.06
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    tb: TBSettings = field(default_factory=TBSettings)
    block_lr_scale: dict[str, float] | None = None
    layer_decay: float | None = None

    def __post_init__(self):
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {self.batch_size!r}")
        if self.max_grad_norm is not None and not (isinstance(self.max_grad_norm, (int, float))
                                                   and math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be None or a positive number, got {self.max_grad_norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.block_lr_scale is not None:
            if self.tempbalance:
                raise ValueError("block_lr_scale is a fixed profile for FT; it cannot be combined with tempbalance=True")
            for block, scale in self.block_lr_scale.items():
                if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale)
                                                                                          and scale > 0):
                    raise ValueError(f"block_lr_scale[{block!r}] must be a positive number, got {scale!r}")
        if self.layer_decay is not None:
            if self.tempbalance or self.block_lr_scale is not None:
                raise ValueError("layer_decay is a fixed profile for FT; it cannot be combined with tempbalance=True "
                                 "or block_lr_scale")
            if isinstance(self.layer_decay, bool) or not isinstance(self.layer_decay, (int, float)) or not (
                    0 < self.layer_decay <= 1):
                raise ValueError(f"layer_decay must be a number in (0, 1], got {self.layer_decay!r}")


@dataclass
class RunResult:
    """What a run measured. ``eval`` holds the accuracy (a fraction) per evaluation set, ``scores`` per set
    accuracy, macro-F1 and balanced accuracy (:func:`scores`); ``block_alpha`` the analysis of the fine-tuned
    encoder (:func:`block_alphas`); ``tb_history`` the TempBalance records (empty for FT); ``seconds`` and
    ``cpu_seconds`` the whole run's wall and process CPU time (training, evaluation, analysis)."""

    arm: str
    size: int
    seed: int
    lr: float
    epochs: int
    batch_size: int
    steps: int
    train_seconds: float
    spectral_seconds: float
    final_loss: float
    eval: dict[str, float]
    block_alpha: dict[str, float]
    block_alpha_std: float
    layer_alpha_std: float
    tb_history: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = math.nan
    cpu_seconds: float = math.nan
    report: Any = field(default=None, repr=False, compare=False)  # the final analysis (a Report), not serialised

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "report"}


@dataclass
class Encoded:
    """Token ids and attention mask padded to ``MAX_LENGTH``, plus labels; built once per run."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = self.attention_mask[idx]
        width = max(int(mask.sum(1).max()), 1)  # cut the padding every sentence of the batch shares
        return dict(input_ids=self.input_ids[idx, :width], attention_mask=mask[:, :width])


class Encoder:
    """A pretrained HF encoder + tokenizer, loaded once, offline (``local_files_only``)."""

    def __init__(self, model_dir: str | Path, num_labels: int = 2):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
        transformers.utils.logging.disable_progress_bar()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), num_labels=num_labels, local_files_only=True)
        finally:
            transformers.logging.set_verbosity(verbosity)
            transformers.utils.logging.enable_progress_bar()
        self.model_dir = Path(model_dir)
        self._pristine = {k: v.clone() for k, v in self.model.state_dict().items()}

    def encode(self, data: TextSet, max_length: int = MAX_LENGTH) -> Encoded:
        """Token ids of ``data`` truncated at ``max_length`` tokens (at most the model's position count)."""
        max_length = min(max_length, int(getattr(self.model.config, "max_position_embeddings", max_length)))
        tok = self.tokenizer(list(data.texts), padding="max_length", truncation=True, max_length=max_length,
                             return_tensors="pt")
        return Encoded(tok["input_ids"], tok["attention_mask"], torch.as_tensor(data.labels, dtype=torch.long))

    def fresh_model(self, seed: int) -> nn.Module:
        """The pretrained encoder with a classification head drawn from ``seed`` (normal, std =
        ``initializer_range``, zero bias - HF's initialisation)."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self._pristine)
        gen = torch.Generator().manual_seed(seed)
        std = float(getattr(model.config, "initializer_range", 0.02))
        with torch.no_grad():
            for name, mod in model.named_modules():
                if _is_head(name) and isinstance(mod, nn.Linear):
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * std)
                    if mod.bias is not None:
                        mod.bias.zero_()
        return model


def _is_head(name: str) -> bool:
    return name == "classifier" or name.startswith("classifier.")


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, batch_size: int = EVAL_BATCH, precision: str = "fp32") -> torch.Tensor:
    """Predicted class of every sentence of ``data`` (eval mode; sentences sorted by length to cut padding)."""
    was_training = model.training
    model.eval()
    order = torch.argsort(data.attention_mask.sum(1))
    pred = torch.empty(len(data), dtype=torch.long)
    with _autocast(precision):
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            pred[idx] = model(**data.batch(idx)).logits.argmax(-1)
    model.train(was_training)
    return pred


def accuracy(model: nn.Module, data: Encoded, batch_size: int = EVAL_BATCH, precision: str = "fp32") -> float:
    """Fraction of ``data`` classified correctly."""
    return scores(predict(model, data, batch_size, precision), data.labels)["acc"]


def scores(pred: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``acc`` (accuracy), ``macro_f1`` (mean over the classes present in ``labels`` of F1, 0 for a class never
    predicted) and ``balanced_acc`` (mean recall over those classes), as fractions."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.shape[0] if pred.ndim else pred} predictions for {labels.shape[0]} labels")
    classes = np.unique(labels)
    f1, recall = [], []
    for c in classes:
        tp = float(np.sum((pred == c) & (labels == c)))
        fp, fn = float(np.sum((pred == c) & (labels != c))), float(np.sum((pred != c) & (labels == c)))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        recall.append(tp / (tp + fn))
    n = max(labels.size, 1)
    return dict(acc=float(np.sum(pred == labels)) / n, macro_f1=float(np.mean(f1)) if f1 else math.nan,
                balanced_acc=float(np.mean(recall)) if recall else math.nan)


def block_alphas(model: nn.Module, **analysis_options: Any) -> tuple[Any, dict[str, float], float, float]:
    """(the analysis Report, mean PL_Alpha_Hill per transformer block, STD of those block means, STD over all
    block matrices) of the model's encoder; STDs are population STDs (ddof 0), as ``TempBalance.alpha_std``. The paper's Fig. 2 plots the
    block-wise STD."""
    from ..model_analysis import analyze
    from ..adapters import get_adapter

    adapter = get_adapter(model)
    report = analyze(model, adapter=adapter, **analysis_options)
    blocks = set(adapter.find_blocks(model)) if hasattr(adapter, "find_blocks") else None
    rows = [r for r in report.rows if r.ok and math.isfinite(r.alpha) and (blocks is None or r.unit in blocks)]
    per_block: dict[str, list[float]] = {}
    for r in rows:
        per_block.setdefault(r.unit, []).append(r.alpha)
    means = {u: float(np.mean(v)) for u, v in per_block.items()}
    block_std = float(np.std(list(means.values()))) if means else math.nan
    layer_std = float(np.std([r.alpha for r in rows])) if rows else math.nan
    return report, means, block_std, layer_std


def finetune(
    encoder: Encoder,
    train: TextSet,
    config: RunConfig,
    evals: dict[str, TextSet] | None = None,
    *,
    encoded: dict[str, Encoded] | None = None,
    progress: Callable[[int], None] | None = None,
    return_model: bool = False,
) -> RunResult | tuple[RunResult, nn.Module]:
    """Fine-tune a fresh copy of ``encoder`` on ``train`` (AdamW, linear decay after a linear warmup, gradient
    clipping, dropout on) and evaluate it once at the end on every set in ``evals``. ``encoded`` may carry already tokenised
    evaluation sets under the same names. ``progress(k)`` is called after every optimizer step with k = 1.
    ``return_model`` also returns the fine-tuned model (to evaluate more sets later)."""
    from ..training.scheduler import TempBalance

    evals = evals or {}
    encoded = dict(encoded or {})
    run_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)  # dropout masks
    model = encoder.fresh_model(config.seed)
    model.train()
    data = encoder.encode(train)
    bs = config.batch_size or batch_size_for(len(train))
    steps_per_epoch = math.ceil(len(train) / bs)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total))
    if config.layer_decay is not None:
        from ..training.llrd import layer_decay_groups

        groups = layer_decay_groups(model, config.lr, config.layer_decay, weight_decay=config.weight_decay)
    else:
        groups = param_groups(model, config.lr, config.weight_decay, config.block_lr_scale)
    optimizer = adamw(groups, lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    tb = TempBalance(model, optimizer, base_scheduler=schedule, **config.tb.kwargs()) if config.tempbalance else None
    order_gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    loss = torch.tensor(math.nan)
    for _ in range(config.epochs):
        for idx in torch.randperm(len(data), generator=order_gen).split(bs):
            with _autocast(config.precision):
                out = model(**data.batch(idx), labels=data.labels[idx])
            loss = out.loss.detach()
            out.loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            (tb or schedule).step()
            if progress is not None:
                progress(1)
        if tb is not None:
            tb.epoch_end()
    train_seconds = time.perf_counter() - start
    results = {}
    for name, ts in evals.items():
        enc = encoded.get(name) or encoder.encode(ts)
        results[name] = scores(predict(model, enc, precision=config.precision), enc.labels)
    report, alpha, block_std, layer_std = block_alphas(model)
    result = RunResult(
        arm="TB" if tb is not None else "FT", size=len(train), seed=config.seed, lr=config.lr, epochs=config.epochs,
        batch_size=bs, steps=total, train_seconds=train_seconds,
        spectral_seconds=tb.spectral_seconds if tb is not None else 0.0, final_loss=float(loss),
        eval={k: v["acc"] for k, v in results.items()}, block_alpha=alpha, block_alpha_std=block_std,
        layer_alpha_std=layer_std, tb_history=_plain_history(tb.history) if tb is not None else [], scores=results,
        seconds=time.perf_counter() - run_start, cpu_seconds=time.process_time() - cpu_start, report=report,
    )
    return (result, model) if return_model else result


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 block_lr_scale: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: matrices with ``weight_decay``, vectors (biases, norms) without; with ``block_lr_scale``, one
    pair per named block (every parameter under ``<block>.``) at ``lr * scale``. A block that owns no parameter
    raises ValueError naming it."""
    scale = block_lr_scale or {}
    buckets: dict[tuple[str | None, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        block = next((b for b in scale if name.startswith(b + ".")), None)
        buckets.setdefault((block, p.ndim >= 2), []).append(p)
    missing = sorted(set(scale) - {b for b, _ in buckets})
    if missing:
        raise ValueError(f"block_lr_scale names block(s) that own no parameter of the model: {missing}")
    order = [None] + list(scale)
    return [dict(params=buckets[b, d], weight_decay=weight_decay if d else 0.0, lr=lr * scale.get(b, 1.0))
            for b in order for d in (True, False) if (b, d) in buckets]


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW, fused where this torch has the fused CPU kernel (same update, ~4x faster step on one thread)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def _plain_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TempBalance history as JSON-ready dicts (NaN -> None)."""
    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return [clean(dict(h)) for h in history]


def block_name_index(name: str) -> int:
    """The block number in a unit name (``bert.encoder.layer.3`` -> 3), for ordering and plot labels."""
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1
