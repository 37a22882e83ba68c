"""The papers' reference code as pure functions: which matrices it tunes, which learning rate each parameter takes
and how alphas become factors - what ``compat=True`` reproduces (docs/COMPAT.md lists every difference).

Each reference is a :class:`Scheme` (its facts, with the file and line they come from):

* ``"modelbalancing"`` - ModelBalancing (EMNLP'24 fine-tuning; ``ZihangHLiu/ModelBalancing`` at ``9970cea``, the
  vendored ``transformers``: ESD = ``utils/esd_utils.py``, TR = ``trainer.py``). Blocks; ``unit="block"`` gives
  every parameter of a block the block's factor; ``unit="layer"`` is two-level: the block's factor times a linear
  map of the layer's alpha within its block (:func:`layer_factors`). Norms borrow the factor of the last weight
  before them in their block (:func:`param_owners`).
* ``"tempbalance_cnn"`` - TempBalance (NeurIPS'23 CIFAR; ``YefanZhou/TempBalance`` at ``9f0d9c7``,
  ``tempbalance.py``): one factor per layer, BatchNorm2d ``xxx.bnK`` takes the factor of the layer ``xxx.convK``.
* ``"tempbalance_lm"`` - the NeurIPS'23 language models (``language_modeling/BTD-Transformer/train_tb.py`` of the
  same repository; ``ZihangHLiu/TempBalance-LM``): one factor per layer, a LayerNorm takes the factor of the
  Linear right before it; between passes every learning rate, the base one included, is held.
* ``"modelbalancing_fno"`` - ModelBalancing's FNO trainer (``sciml/pdebench/models/fno/train.py``): one factor per
  layer, nothing else follows.
* ``"alphadecay"`` - AlphaDecay (NeurIPS'25 LLM pre-training; ``hed-ucas/AlphaDecay`` at ``23ce27c``,
  ``LLaMa-pretraining/WeightDecayUnbalance.py``): one weight decay per layer, BatchNorm ``xxx.bnK`` following
  ``xxx.convK``; its assign functions are a policy (:class:`tempbalance.training.alphadecay.AlphaDecay`), not
  :meth:`Plan.factors`.
* ``"llr"`` - LLR, "One LR Doesn't Fit All" (pretraining LLaMA with AdamW or Muon; ``hed-ucas/Layer-wise-Learning-Rate``
  at ``bbd0dcf``, ``olmo/LRUnbalance.py``): one factor per matrix; the embedding and the LM head (by name) are units
  that are not analysed, and every other parameter is the unit :data:`REST_UNIT`; the factors and the transitions
  between them are :class:`tempbalance.training.llr.LLR`'s (:func:`plan` builds its units with :func:`edge_plan`).

The functions take the adapter's :class:`~tempbalance.adapters.MatrixSpec` s in model order; ``blocks[i]`` is the
block of ``specs[i]`` or ``None`` when it lies outside every block (``block_of_specs`` builds it from an adapter).
They never touch the model or an optimizer. :func:`plan` puts them together into the :class:`Plan` that
``TempBalance(compat=...)`` follows: its units are the tuned matrices, every parameter takes the factor of its
owner, and :meth:`Plan.factors` maps a pass; the scheduler adds the scheme's timing (:attr:`Scheme.factors_act_from`,
:attr:`Scheme.holds_between_passes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from torch import nn

from . import mapping as _mapping
from ..adapters import MatrixSpec
from ..adapters.blocks import block_of

DROP_ORDERS = ("threshold_then_remove", "remove_then_threshold")
_MAPPING_FIELDS = _mapping.MAPPING_FIELDS
PARAM_RULES = ("block_previous_weight", "norm_by_name", "norm_after_linear", "own_layer")
REST_UNIT = "(rest)"  # LLR's unit of every parameter no listed layer owns (its group "Untuned", LRUnbalance.py:256-259)


@dataclass(frozen=True)
class Scheme:
    """How one reference code assigns learning rates.

    drop_order: ``"threshold_then_remove"`` - layers with fewer than ``min_eigs`` eigenvalues are never listed,
        then ``remove_last`` drops the last listed one (ModelBalancing TR:2018-2022 after ESD:67-68);
        ``"remove_then_threshold"`` - ``remove_first`` / ``remove_last`` drop the first / last analysed layer,
        then the threshold drops the small ones (TempBalance tempbalance.py:136-147).
    param_rule: which layer's learning rate a parameter takes (:func:`param_owners`).
    two_level_layers: ``unit="layer"`` is the block's factor times a linear map of the layer within its block.
    factors_act_from: ``"next_update"`` - the spectra are read at the top of step t and the factors are written
        after update t, so they act from update t + 1, and update 0 runs with factor 1 (TR:1973, 2096);
        ``"this_update"`` - the factors of a pass act from the next update after it: the pass at construction
        drives the first update (epoch 0 of the per-epoch references; the LM code's groups start at the first
        pass's rates, train_tb.py:446-452).
    layer_types: the module types the reference analyses (``named_modules`` order); LoRA layers are analysed as
        ModelBalancing's ``lora_esd_estimator`` does (the effective weight) in every scheme.
    eig_count: what ``min_eigs`` counts: ``"listed"`` - the spectrum's size, read from the shape before any fit
        (:func:`select` drops the small ones once); ``"filtered"`` - the eigenvalues left after ``filter_zeros``,
        at every pass (the FNO trainer: more than ``min_eigs`` at the first pass, T:194, at least ``min_eigs``
        later, T:483).
    holds_between_passes: between analyses every group keeps the learning rate of the last one, the base rate
        included (the LM code's ``tb_update=stage``, train_tb.py:618-621).
    interval: the reference's cadence, in words.
    source: repository and commit the scheme was read from.
    policy: ``""`` when :meth:`Plan.factors` maps a pass (:class:`~tempbalance.training.policies.CompatPolicy`);
        else the :class:`~tempbalance.training.policies.Policy` that computes the reference's own mapping, which
        ``TempBalance(compat=name)`` then needs as ``policy=`` (its ``reproduces`` names the scheme).
    edge_names: name parts of the layers that are units without being analysed (LLR's ``embed_name`` /
        ``head_name``: the embedding and the LM head); empty for the schemes that analyse every unit.
    several_optimizers: the reference's set-up has more than one optimizer (LLR with Muon: Muon for the hidden
        matrices, AdamW for the rest), so ``TempBalance(model, [muon, adamw], compat=...)`` is allowed.
    """

    name: str
    drop_order: str
    param_rule: str
    two_level_layers: bool
    factors_act_from: str
    layer_types: tuple[type, ...]
    eig_count: str
    holds_between_passes: bool
    interval: str
    source: str
    policy: str = ""
    edge_names: tuple[str, ...] = ()
    several_optimizers: bool = False

    def __post_init__(self) -> None:
        if self.drop_order not in DROP_ORDERS:
            raise ValueError(f"scheme {self.name!r}: drop_order must be one of {DROP_ORDERS}, got {self.drop_order!r}")
        if self.param_rule not in PARAM_RULES:
            raise ValueError(f"scheme {self.name!r}: param_rule must be one of {PARAM_RULES}, got {self.param_rule!r}")
        if self.factors_act_from not in ("next_update", "this_update"):
            raise ValueError(f"scheme {self.name!r}: factors_act_from must be 'next_update' or 'this_update', "
                             f"got {self.factors_act_from!r}")
        if self.eig_count not in ("listed", "filtered"):
            raise ValueError(f"scheme {self.name!r}: eig_count must be 'listed' or 'filtered', got {self.eig_count!r}")


SCHEMES: dict[str, Scheme] = {
    s.name: s for s in (
        Scheme("modelbalancing", "threshold_then_remove", "block_previous_weight", True, "next_update",
               (nn.Linear, nn.Conv2d), "listed", False,
               "every min(100, max(1, len(train_dataloader) // 10)) optimizer steps (TR:1680-1684)",
               "ZihangHLiu/ModelBalancing@9970cea5a7b7c7ddc65424f9a75ce6016954c3ae"),
        Scheme("tempbalance_cnn", "remove_then_threshold", "norm_by_name", False, "this_update",
               (nn.Linear, nn.Conv2d), "listed", False,
               "every epoch (main_tb.py:367-372)",
               "YefanZhou/TempBalance@9f0d9c7e86b70c6613ac3b44b5fd147873050823"),
        Scheme("tempbalance_lm", "remove_then_threshold", "norm_after_linear", False, "this_update",
               (nn.Linear, nn.Conv2d), "listed", True,
               "every --esd-interval optimizer steps, after the update (train_tb.py:553-621)",
               "YefanZhou/TempBalance@9f0d9c7e86b70c6613ac3b44b5fd147873050823 (language_modeling/)"),
        Scheme("modelbalancing_fno", "remove_then_threshold", "own_layer", False, "this_update",
               (nn.Linear, nn.Conv2d, nn.Conv1d), "filtered", False,
               "every tb_interval_ep epochs (sciml/pdebench/models/fno/train.py:457-578)",
               "ZihangHLiu/ModelBalancing@9970cea5a7b7c7ddc65424f9a75ce6016954c3ae"),
        Scheme("alphadecay", "remove_then_threshold", "norm_by_name", False, "this_update",
               (nn.Linear, nn.Conv2d), "listed", False,
               "right before every --unbalancedWD_every-th update, (update_step + 1) % 500 == 0 "
               "(LLaMa-pretraining/torchrun_main.py:421)",
               "hed-ucas/AlphaDecay@23ce27ca318bdd3f1942fff95a9bc680b31245f4 (LLaMa-pretraining/)",
               policy="tempbalance.training.alphadecay.AlphaDecay"),
        Scheme("llr", "remove_then_threshold", "norm_by_name", False, "this_update",
               (nn.Linear, nn.Conv2d, nn.Embedding), "listed", False,
               "at update 1, then at every unbalancedlr_every-th update, on the weights after the update before it, "
               "while the update is <= stop_at * LLR_ratio (olmo/train.py:1070-1084)",
               "hed-ucas/Layer-wise-Learning-Rate@bbd0dcf86af80b8843866a9a041086a37de35897",
               policy="tempbalance.training.llr.LLR", edge_names=("embed", "head"), several_optimizers=True),
    )
}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """The :class:`Scheme` named ``scheme`` (or ``scheme`` itself)."""
    if isinstance(scheme, Scheme):
        return scheme
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {tuple(SCHEMES)}, got {scheme!r}")
    return SCHEMES[scheme]


def reference_interval(steps_per_epoch: int, *, esd_interval: int = 100, grad_accum: int = 1,
                       max_steps: int | None = None) -> int:
    """ModelBalancing's analysis interval in optimizer steps (TR:1680-1684): ``min(esd_interval, max(1,
    steps_per_epoch // 10))``, or with gradient accumulation ``min(esd_interval, max_steps // 20)``.

    ``steps_per_epoch`` is ``len(train_dataloader)`` (batches, not optimizer steps, as the reference counts).
    """
    for arg, v in (("steps_per_epoch", steps_per_epoch), ("esd_interval", esd_interval), ("grad_accum", grad_accum)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {v!r}")
    if grad_accum == 1:
        return min(esd_interval, max(1, steps_per_epoch // 10))
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 20:
        raise ValueError(f"with grad_accum > 1 the reference uses max_steps // 20; max_steps must be an integer >= 20 "
                         f"(the reference would divide by zero below), got {max_steps!r}")
    return min(esd_interval, max_steps // 20)


def spectrum_size(spec: MatrixSpec) -> int:
    """How many eigenvalues the reference lists for this matrix before any filtering: the smaller side, times the
    number of kernel positions (conv) or Fourier modes (spectral). Read from the shape; nothing is computed."""
    shape = tuple(spec.weight().shape)
    if len(shape) < 2:
        raise ValueError(f"layer '{spec.name}': a {len(shape)}-d weight has no spectrum")
    return int(math.prod(shape[2:])) * min(shape[0], shape[1]) if spec.kind in ("conv", "spectral") else min(shape[:2])


def select(specs: Sequence[MatrixSpec], *, scheme: str | Scheme, min_eigs: int = 50, remove_first: bool = False,
           remove_last: bool = False, sizes: Sequence[int] | None = None) -> list[int]:
    """Indices of the matrices the reference tunes, in model order.

    ``min_eigs`` drops matrices with fewer eigenvalues (``sizes``, default :func:`spectrum_size`);
    ``remove_first`` / ``remove_last`` drop the first / last *matrix* - not a block - in the scheme's order
    (:attr:`Scheme.drop_order`): ModelBalancing lists only matrices with enough eigenvalues and then drops the last
    (BERT's ``pooler.dense``, RoBERTa's ``classifier.dense``: both outside every block, so no block changes);
    TempBalance drops the first and last analysed layer, then the small ones.
    """
    sch = get_scheme(scheme)
    if isinstance(min_eigs, bool) or not isinstance(min_eigs, int) or min_eigs < 0:
        raise ValueError(f"min_eigs must be an integer >= 0, got {min_eigs!r}")
    for arg, v in (("remove_first", remove_first), ("remove_last", remove_last)):
        if not isinstance(v, bool):
            raise ValueError(f"{arg} must be True or False, got {v!r}")
    sizes = [spectrum_size(s) for s in specs] if sizes is None else [int(n) for n in sizes]
    if len(sizes) != len(specs):
        raise ValueError(f"sizes has {len(sizes)} values, specs has {len(specs)}")
    big = [i for i in range(len(specs)) if sizes[i] >= min_eigs]
    if sch.drop_order == "threshold_then_remove":
        return big[1 if remove_first else 0: len(big) - 1 if remove_last and big else len(big)]
    ends = set(range(len(specs))[:1] if remove_first else []) | set(range(len(specs))[-1:] if remove_last else [])
    return [i for i in big if i not in ends]


def block_of_specs(adapter: Any, specs: Sequence[MatrixSpec]) -> list[str | None]:
    """``blocks`` for the functions here: each matrix's block from a block adapter (the blocks its last
    ``enumerate`` found, and ``spec.unit``), ``None`` outside blocks; all ``None`` for an adapter that knows no
    blocks. Call it after ``adapter.enumerate(model)`` returned ``specs``."""
    tuned = getattr(adapter, "tuned", None)
    blocks = getattr(adapter, "_blocks", None)
    if tuned is None or not blocks:
        return [None] * len(specs)
    return [s.unit if s.unit in blocks else None for s in specs]


def layer_factors(
    values: Any,
    blocks: Sequence[str | None] | None = None,
    *,
    unit: str = "block",
    normalize: bool = False,
    backend: str = "auto",
    options: _mapping.MappingOptions | None = None,
    **mapping: Any,
) -> np.ndarray:
    """The reference's factor of every tuned matrix, from its metric ``values`` (alpha).

    ``options`` (:class:`~tempbalance.training.mapping.MappingOptions`, or its fields as keywords, ``mapping``:
    ``mapping``, ``tau``, ``s_lo``, ``s_hi``, ``s1``, ``s2``) always with the reference's ``compat=True``. With
    ``blocks`` (ModelBalancing, ESD:687-791): ``mapping`` maps the blocks' mean alphas to block factors
    (``"sigmoid"``; ``"linear"`` and ``"rank"`` from ``s1`` to ``s2``, i.e. ``lr_min_ratio`` to ``lr_min_ratio +
    lr_slope``, see :func:`tempbalance.mapping.linear_range`; equal means -> ``s2``). ``unit="block"``: each matrix
    gets its block's factor; ``unit="layer"``: the block's factor times ``s1 .. s2`` mapped linearly from the
    smallest to the largest alpha within the block (a block of one matrix, or of equal alphas: ``s2``). Matrices
    outside every block (``None``) get 1. Without ``blocks`` (the TempBalance references): ``mapping`` over the
    matrices themselves.

    ``normalize`` (``tb_lr_normalize``): all factors divided by their mean over the matrices, the untuned ones
    included (ESD:765-766, 788-789). Non-finite values (an alpha that could not be fitted) are left out of means,
    min/max and ranks and give factor 1 (the reference would propagate NaN into the learning rates).
    """
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    v = np.where(np.isfinite(v), v, np.nan)
    if unit not in ("block", "layer"):
        raise ValueError(f"unit must be 'block' or 'layer', got {unit!r}")
    opts = _mapping.MappingOptions.of(options, dict(mapping, compat=True))
    if blocks is None:
        out = opts.factors(v, backend=backend)
    else:
        if len(blocks) != v.size:
            raise ValueError(f"blocks has {len(blocks)} entries, values has {v.size}")
        names = list(dict.fromkeys(b for b in blocks if b is not None))  # first-seen order, as the reference
        index = {b: k for k, b in enumerate(names)}
        unit_index = np.array([index[b] if b is not None else -1 for b in blocks], dtype=np.int64)
        means = _mapping.unit_means(v, unit_index, len(names), backend=backend)
        block_f = opts.factors(means, backend=backend)
        out = np.ones_like(v)
        inside = unit_index >= 0
        out[inside] = block_f[unit_index[inside]]
        if unit == "layer":
            for k in range(len(names)):
                members = np.flatnonzero(unit_index == k)
                if np.isfinite(means[k]):
                    out[members] *= opts.replace(mapping="linear").factors(v[members], backend=backend)
    return _mapping.normalize_factors(out, backend=backend) if normalize else out


def _decay_names(model: nn.Module) -> set[str]:
    """Parameters that are neither biases nor inside a LayerNorm: HF Trainer's weight-decay set (TR:963-972),
    which the reference's norm rule reads."""
    out: set[str] = set()

    def walk(mod: nn.Module, prefix: str) -> None:
        if isinstance(mod, nn.LayerNorm):
            return
        for n, _ in mod.named_parameters(recurse=False):
            out.add(prefix + n)
        for n, child in mod.named_children():
            walk(child, f"{prefix}{n}.")

    walk(model, "")
    return {n for n in out if "bias" not in n}


def param_owners(model: nn.Module, specs: Sequence[MatrixSpec], *, scheme: str | Scheme,
                 blocks: Sequence[str | None] | None = None) -> dict[str, str | None]:
    """For every parameter (``model.named_parameters()`` order, frozen ones included: ownership follows the
    model's structure, so a parameter unfrozen later takes its factor), the name of the tuned matrix whose factor
    it takes, or ``None`` (factor 1). ``specs`` are the tuned matrices (after :func:`select`); a matrix's
    own parameters (``spec.params``: weight, bias, LoRA factors) take its factor in every scheme. The rest, by
    :attr:`Scheme.param_rule`:

    * ``"block_previous_weight"`` (ModelBalancing TR:2124-2148): a parameter inside a block (``blocks``) that no
      tuned matrix owns - a LayerNorm, a bias of an untuned layer - takes the factor of the last weight before it
      in its block (a "decay" parameter: not a bias, not in a LayerNorm). With none before it the reference raises
      ``KeyError``; here it takes the block's first tuned matrix. Outside blocks: ``None``. (The reference walks
      the trainable parameters only; here a frozen weight counts too - the same unless a weight of a block is
      frozen.)
    * ``"norm_by_name"`` (TempBalance tempbalance.py:82-92, 174-187): a ``BatchNorm2d`` named ``...bnK`` takes the
      factor of the tuned layer named with ``bn`` replaced by ``conv``.
    * ``"norm_after_linear"`` (language_modeling train_tb.py:319-333, 397-409): a ``LayerNorm`` takes the factor
      of the Linear just before it (among Linear and LayerNorm modules, in module order), if that one is tuned.
    * ``"own_layer"``: nothing else.
    """
    sch = get_scheme(scheme)
    tuned = {s.name for s in specs}
    owner_of: dict[int, str] = {}
    for s in specs:
        for p in s.params:
            owner_of.setdefault(id(p), s.name)
    named = list(model.named_parameters())
    out: dict[str, str | None] = {n: owner_of.get(id(p)) for n, p in named}
    rule = sch.param_rule
    if rule == "block_previous_weight":
        if blocks is not None and len(blocks) != len(specs):
            raise ValueError(f"blocks has {len(blocks)} entries, specs has {len(specs)}")
        block_paths = sorted({b for b in (blocks or []) if b is not None}, key=len, reverse=True)
        first: dict[str, str] = {}
        for s, b in zip(specs, blocks or []):
            if b is not None:
                first.setdefault(b, s.name)
        decay = _decay_names(model)
        last: dict[str, str] = {}
        for n, _ in named:
            b = block_of(n.rsplit(".", 1)[0], block_paths) if "." in n else None
            if b is None:
                out[n] = None
            elif out[n] is not None:
                if n in decay:
                    last[b] = out[n]
            else:
                out[n] = last.get(b, first.get(b))
    elif rule in ("norm_by_name", "norm_after_linear"):
        modules = dict(model.named_modules())
        follows: dict[str, str] = {}
        if rule == "norm_by_name":
            for name, mod in modules.items():
                if isinstance(mod, nn.BatchNorm2d) and name.replace("bn", "conv") in tuned:
                    follows[name] = name.replace("bn", "conv")
        else:
            previous: tuple[str, type] | None = None
            for name, mod in modules.items():
                if isinstance(mod, nn.Linear):
                    previous = (name, nn.Linear)
                elif isinstance(mod, nn.LayerNorm):
                    if previous is not None and previous[1] is nn.Linear and previous[0] in tuned:
                        follows[name] = previous[0]
                    previous = (name, nn.LayerNorm)
        for norm, layer in follows.items():
            for pn, p in modules[norm].named_parameters():
                full = f"{norm}.{pn}" if norm else pn
                if full in out and out[full] is None:
                    out[full] = layer
    return out


def default_scheme(adapter: Any, specs: Sequence[MatrixSpec]) -> str:
    """The scheme ``compat=True`` means: ModelBalancing's for a model whose adapter found blocks (transformer
    blocks), else the NeurIPS'23 per-layer one. Call it after ``adapter.enumerate(model)`` returned ``specs``."""
    return "modelbalancing" if any(b is not None for b in block_of_specs(adapter, specs)) else "tempbalance_cnn"


@dataclass(frozen=True)
class Plan:
    """What a reference does with one model: the matrices it tunes, the matrix whose factor every parameter
    takes, and how one pass's metric values become factors (:func:`plan` builds it).

    specs: the tuned matrices, model order; indices: their positions in the specs :func:`plan` was given;
    blocks: their blocks (ModelBalancing; ``None`` for the per-layer schemes); owners: parameter name -> the
    name of the spec (or extra unit) whose factor it takes, or ``None`` (factor 1); unit: ``"block"`` or
    ``"layer"``; normalize: ``tb_lr_normalize``; extra_units: units that own parameters without an analysed
    matrix (LLR's embedding, LM head and :data:`REST_UNIT`), after the specs' units - their factors are the
    policy's (:class:`tempbalance.training.llr.LLR`).
    """

    scheme: Scheme
    specs: list[MatrixSpec]
    indices: list[int]
    blocks: list[str | None] | None
    owners: dict[str, str | None]
    unit: str
    normalize: bool
    extra_units: tuple[str, ...] = ()

    def factors(self, values: Any, *, options: _mapping.MappingOptions | None = None,
                backend: str = "auto") -> np.ndarray:
        """The factor of every tuned matrix from its metric ``values`` (NaN: not fitted; :func:`layer_factors`)."""
        if self.extra_units:
            raise ValueError(f"compat={self.scheme.name!r}: its units' factors and the transitions between them are "
                             "its policy's (tempbalance.training.llr.LLR), not a mapping of one pass")
        unit = self.unit if self.scheme.two_level_layers else "block"
        return layer_factors(values, self.blocks, unit=unit, normalize=self.normalize, backend=backend,
                             options=options)

    def analysis_min_eigs(self, min_eigs: int, *, first: bool) -> int:
        """The ``min_eigs`` a pass's analysis applies: 0 where :func:`plan` already dropped the small matrices by
        their spectrum's size; the FNO trainer's filtered count otherwise (stricter at the first pass)."""
        if self.scheme.eig_count == "listed":
            return 0
        return min_eigs + 1 if first else min_eigs


def plan(
    model: nn.Module,
    specs: Sequence[MatrixSpec],
    *,
    scheme: str | Scheme,
    blocks: Sequence[str | None] | None = None,
    unit: str | None = None,
    min_eigs: int = 50,
    remove_first: bool = False,
    remove_last: bool = False,
    normalize: bool = False,
    sizes: Sequence[int] | None = None,
) -> Plan:
    """The :class:`Plan` of ``scheme`` for ``model``, from ``specs`` (an adapter's matrices, model order; ``blocks``
    aligned with them, needed by ModelBalancing, which tunes only matrices inside a block).

    Keeps the matrices of the scheme's :attr:`~Scheme.layer_types` (and LoRA layers), then :func:`select` (with a
    ``"filtered"`` eigenvalue count the threshold is the analysis's, at every pass: see
    :meth:`Plan.analysis_min_eigs`), then :func:`param_owners`. ``unit``: ``"block"`` or ``"layer"`` under
    ModelBalancing (``None``: ``"block"``); the per-layer schemes take ``"layer"`` or ``None`` only.
    """
    sch = get_scheme(scheme)
    if unit not in (None, "block", "layer"):
        raise ValueError(f"unit must be 'block', 'layer' or None, got {unit!r}")
    if not sch.two_level_layers and unit not in (None, "layer"):
        raise ValueError(f"compat={sch.name!r} gives every layer its own factor; unit={unit!r} cannot be reproduced "
                         "with it: use unit='layer'")
    unit = unit or ("block" if sch.two_level_layers else "layer")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be True or False, got {normalize!r}")
    if blocks is not None and len(blocks) != len(specs):
        raise ValueError(f"blocks has {len(blocks)} entries, specs has {len(specs)}")
    if sizes is not None and len(sizes) != len(specs):
        raise ValueError(f"sizes has {len(sizes)} values, specs has {len(specs)}")
    if sch.edge_names:
        return edge_plan(model, specs, scheme=sch, min_eigs=min_eigs, remove_first=remove_first,
                         remove_last=remove_last, normalize=normalize, sizes=sizes)
    modules = dict(model.named_modules())
    analysed = [i for i, s in enumerate(specs)
                if s.kind == "lora" or isinstance(modules.get(s.name), sch.layer_types)]
    keep = select([specs[i] for i in analysed], scheme=sch,
                  min_eigs=min_eigs if sch.eig_count == "listed" else 0, remove_first=remove_first,
                  remove_last=remove_last, sizes=None if sizes is None else [sizes[i] for i in analysed])
    indices = [analysed[k] for k in keep]
    kept = [specs[i] for i in indices]
    kept_blocks = None
    if sch.param_rule == "block_previous_weight":
        if blocks is None:
            raise ValueError(f"scheme {sch.name!r} needs blocks= (the block of each matrix; see block_of_specs)")
        if specs and not any(b is not None for b in blocks):
            raise ValueError(f"compat={sch.name!r} tunes the matrices inside blocks, and none of the {len(specs)} "
                             "matrices is in one; use an adapter that knows the model's blocks (adapter="
                             "'hf_encoder', 'llama', ...) or compat='tempbalance_cnn' (one factor per layer)")
        kept_blocks = [blocks[i] for i in indices]
    owners = param_owners(model, kept, scheme=sch, blocks=kept_blocks)
    return Plan(sch, kept, indices, kept_blocks, owners, unit, normalize)


def edge_plan(model: nn.Module, specs: Sequence[MatrixSpec], *, scheme: str | Scheme, min_eigs: int = 50,
              remove_first: bool = False, remove_last: bool = False, normalize: bool = False,
              sizes: Sequence[int] | None = None) -> Plan:
    """The :class:`Plan` of a scheme with :attr:`~Scheme.edge_names` (LLR, LRUnbalance.py (LU) and train.py).

    The reference lists every module of its :attr:`~Scheme.layer_types` in ``named_modules`` order (LU:474-475).
    A listed layer whose name contains an edge name (``"embed"``, ``"head"``: LU:575, config.py:593-594) is a unit
    that is never analysed (its eigenvalue count is the largest of the list, LU:174-175); every other listed layer
    must be one of ``specs`` (the adapter's matrices) to be analysed - one that is not (left out by ``exclude``,
    an embedding that is not an edge) joins the rest. ``remove_first`` / ``remove_last`` drop the first / last
    listed layer - an edge one too - and then layers with fewer than ``min_eigs`` eigenvalues are dropped
    (LU:177-185). The tuned matrices own their parameters (a ``BatchNorm2d`` ``...bnK`` follows ``...convK``,
    LU:121-131), the edge layers theirs, and every other parameter is :data:`REST_UNIT`'s (the reference's last
    group, LU:256-259): the plan's :attr:`~Plan.extra_units` are the edge units, then :data:`REST_UNIT`.
    """
    sch = get_scheme(scheme)
    if isinstance(min_eigs, bool) or not isinstance(min_eigs, int) or min_eigs < 0:
        raise ValueError(f"min_eigs must be an integer >= 0, got {min_eigs!r}")
    for arg, v in (("remove_first", remove_first), ("remove_last", remove_last), ("normalize", normalize)):
        if not isinstance(v, bool):
            raise ValueError(f"{arg} must be True or False, got {v!r}")
    if normalize:
        raise ValueError(f"compat={sch.name!r} has no normalization (tb_lr_normalize); use normalize=False")
    if sizes is not None and len(sizes) != len(specs):
        raise ValueError(f"sizes has {len(sizes)} values, specs has {len(specs)}")
    index = {s.name: i for i, s in enumerate(specs)}
    rows: list[tuple[str, int | None]] = []  # (name, index in specs; None for an edge layer)
    edge_modules: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, sch.layer_types) and not (name in index and specs[index[name]].kind == "lora"):
            continue
        if any(part in name for part in sch.edge_names):
            rows.append((name, None))
            edge_modules[name] = mod
        elif name in index:
            rows.append((name, index[name]))
    size = [spectrum_size(specs[i]) if sizes is None else int(sizes[i]) for _, i in rows if i is not None]
    edge_size = max(size, default=-1)  # LU:175
    rows = rows[1 if remove_first else 0: len(rows) - 1 if remove_last and rows else len(rows)]
    kept = [(n, i) for n, i in rows
            if (edge_size if i is None else spectrum_size(specs[i]) if sizes is None else int(sizes[i])) >= min_eigs]
    indices = [i for _, i in kept if i is not None]
    tuned = [specs[i] for i in indices]
    edges = [n for n, i in kept if i is None]
    owners = param_owners(model, tuned, scheme=sch)
    for edge in edges:
        for p_name, _ in edge_modules[edge].named_parameters():
            full = f"{edge}.{p_name}" if edge else p_name
            if full in owners and owners[full] is None:
                owners[full] = edge
    owners = {n: REST_UNIT if o is None else o for n, o in owners.items()}
    return Plan(sch, tuned, indices, None, owners, "layer", False, extra_units=(*edges, REST_UNIT))


def param_factors(model: nn.Module, specs: Sequence[MatrixSpec], values: Any, *, backend: str = "auto",
                  options: _mapping.MappingOptions | None = None, **arguments: Any) -> dict[str, float]:
    """The reference's learning-rate factor of every parameter (name -> factor; the learning rate is base lr x
    factor), from the metric ``values`` of all ``specs`` (every analysable matrix, model order).

    ``arguments``: those of :func:`plan` (``scheme``, ``blocks``, ``unit``, ``min_eigs``, ``remove_first``,
    ``remove_last``, ``normalize``, ``sizes``), which picks the tuned matrices and the owner of every parameter, and
    the fields of the mapping (``mapping``, ``tau``, ``s_lo``, ``s_hi``, ``s1``, ``s2``; over ``options``), by which
    :meth:`Plan.factors` maps their values. ``blocks`` (aligned with ``specs``) is needed by the ModelBalancing
    scheme; the TempBalance schemes tune every selected matrix as its own layer. With a ``"filtered"`` eigenvalue
    count (the FNO scheme) ``min_eigs`` is the analysis's business: pass values of NaN for the matrices it left
    untuned.
    """
    mapping = {k: arguments.pop(k) for k in list(arguments) if k in _MAPPING_FIELDS}
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if v.size != len(specs):
        raise ValueError(f"values has {v.size} entries, specs has {len(specs)}")
    p = plan(model, specs, **arguments)
    factors = p.factors(v[p.indices], options=_mapping.MappingOptions.of(options, mapping), backend=backend)
    by_layer = dict(zip((s.name for s in p.specs), factors.tolist()))
    return {n: (by_layer[o] if o is not None else 1.0) for n, o in p.owners.items()}
