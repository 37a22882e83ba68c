"""TempBalance's keyword arguments: named once, checked once, at construction.

A TempBalance takes three kinds of options, each owned by one frozen class: how the weights are analysed
(:class:`~tempbalance.analysis.options.AnalysisOptions`, the fields in :data:`ANALYSIS_FIELDS`), how unit values
become factors (:class:`~tempbalance.training.mapping.MappingOptions`) and what the scheduler itself does
(:class:`Arguments`). :func:`parse` splits the keywords among them; :data:`NAMES` is every keyword TempBalance
takes (presets check theirs against it).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ..analysis.options import AnalysisOptions, field_names
from . import compat as _compat
from .cadence import Cadence, as_cadence
from .mapping import MAPPING_FIELDS as mapping_fields, MappingOptions
from .policies import METRICS, TARGETS, Policy
# the analysis options a TempBalance takes as keywords (the rest keep AnalysisOptions' defaults; conv_scale is the
# compat scheme's); min_eigs=None there means the adapter's default
ANALYSIS_FIELDS = ("xmin_pos", "xmin_rule", "min_eigs", "filter_zeros", "dtype", "backend", "num_threads",
                   "chunk_bytes")
MAPPING_FIELDS = tuple(n for n in mapping_fields if n != "compat")  # compat is the scheduler's


def _flag(arg: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{arg} must be True or False, got {v!r}")


def _count(arg: str, v: Any, lo: int, meaning: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{arg} must be an integer >= {lo} ({meaning}), got {v!r}")


@dataclass(frozen=True)
class Arguments:
    """What the scheduler does, beyond analysis and mapping options (every field documented on
    :class:`~tempbalance.TempBalance`)."""

    base_scheduler: Any = None
    unit: str | None = None
    normalize: bool = False
    interval: int | str | Cadence | None = None
    lag: int = 0
    stagger: int = 1
    include: str | Iterable[str] | None = None
    exclude: str | Iterable[str] | None = None
    remove_first: bool = False
    remove_last: bool = False
    metric: str = "alpha"
    target: str = "lr"
    compat: bool | str = False
    adapter: Any = "auto"
    include_embeddings: bool = False
    process_group: Any = None
    policy: Policy | Sequence[Policy] | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        as_cadence(self.interval)  # a bad interval is an error now
        _count("lag", self.lag, 0, "0 = synchronous")
        _count("stagger", self.stagger, 1, "1 = every matrix at every refresh")
        for arg in ("remove_first", "remove_last", "normalize", "include_embeddings"):
            _flag(arg, getattr(self, arg))
        if not isinstance(self.compat, bool) and self.compat not in _compat.SCHEMES:
            raise ValueError(f"compat must be True, False or one of {tuple(_compat.SCHEMES)}, got {self.compat!r}")
        if self.compat and self.stagger > 1:
            raise ValueError("stagger >= 2 analyses a slice of the matrices per refresh (an approximation); compat "
                             "reproduces a reference that analyses every matrix at every refresh: use stagger=1")
        if self.compat and self.include_embeddings:
            raise ValueError("include_embeddings=True: no reference code analyses embeddings; drop it with compat")
        if self.policy is not None:
            policies = self.policies()
            if not policies or not all(isinstance(p, Policy) for p in policies):
                raise TypeError("policy must be a tempbalance.training.policies.Policy or a non-empty list of them, "
                                f"got {self.policy!r}")
            targets = [p.target for p in policies]
            if len(set(targets)) != len(targets):
                raise ValueError(f"each policy drives its own knob; these share one: targets {targets}")
            if self.compat and not all(self.compat in p.reproduces for p in policies):
                known = sorted({s for p in policies for s in p.reproduces})
                raise ValueError("policy= replaces the mapping, and compat reproduces a reference code's own: give one"
                                 + (f" (the policy reproduces compat={known[0]!r})" if len(known) == 1 else ""))
        elif isinstance(self.compat, str) and _compat.SCHEMES[self.compat].policy:
            raise ValueError(f"compat={self.compat!r} maps the spectra with the reference's own rules: pass "
                             f"policy={_compat.SCHEMES[self.compat].policy}(...), or a preset "
                             f"(tempbalance.presets.names())")

    def policies(self) -> list[Policy]:
        """The policies given (one or a list), or [] for TempBalance's own."""
        if self.policy is None:
            return []
        return [self.policy] if isinstance(self.policy, Policy) else list(self.policy)


@dataclass(frozen=True)
class Parsed:
    """:func:`parse`'s result: the scheduler's arguments, the mapping options and the analysis options
    (``min_eigs=None``: the adapter's default, filled in once the adapter is known)."""

    args: Arguments
    mapping: MappingOptions
    analysis: AnalysisOptions
    min_eigs: int | None


def parse(kwargs: dict[str, Any]) -> Parsed:
    """Split TempBalance's keyword arguments among their owners and check them all (a ``TypeError`` naming
    unknown keywords, a ``ValueError`` naming a bad value), before anything is built."""
    unknown = sorted(set(kwargs) - set(NAMES))
    if unknown:
        raise TypeError(f"TempBalance got unexpected keyword argument(s) {unknown}")
    own = {k: v for k, v in kwargs.items() if k in _ARGUMENT_FIELDS}
    args = Arguments(**own)
    replaced = sorted(set(kwargs) & set(POLICY_OPTIONS)) if args.policy is not None else []
    if replaced:
        raise ValueError(f"policy= decides {replaced} itself; give them to the policy, not to TempBalance")
    mapping = MappingOptions(compat=bool(args.compat), **{k: v for k, v in kwargs.items() if k in MAPPING_FIELDS})
    analysis = {k: v for k, v in kwargs.items() if k in ANALYSIS_FIELDS}
    min_eigs = analysis.pop("min_eigs", None)
    options = AnalysisOptions(**analysis, **({} if min_eigs is None else {"min_eigs": min_eigs}))
    return Parsed(args, mapping, options, min_eigs)


# TempBalance's documentation of its arguments (appended to its docstring)
DOC = """
Args:
    model: the model being trained (its structure decides which unit every parameter belongs to, frozen
        parameters included: they get their unit's factor once they train).
    optimizer: any torch optimizer (or wrapper exposing ``param_groups``) over the model's parameters, or a list of
        them driven from one spectral pass (Muon for the hidden matrices and AdamW for the rest: ``[muon, adamw]``;
        no parameter in two of them).
        ``torch.optim.LBFGS`` is refused (it supports one param group; TempBalance needs one per unit).
    base_scheduler: the user's LR scheduler, built on ``optimizer`` before this object (several optimizers: a
        list with one scheduler or None per optimizer); ``step()`` advances it. Without one the groups' current ``lr`` is the (constant) base. Assigning ``tb.base_scheduler``
        later is checked the same way (a scheduler built after TempBalance read the factored LRs: refused).
    unit: ``"block"`` (mean alpha of a block's matrices drives every parameter of the block) or ``"layer"``
        (each matrix drives its own layer); ``None`` = the adapter's choice.
    mapping: ``"sigmoid"`` (TBSigmoid: ``tau``, ``s_lo``, ``s_hi``), ``"linear"`` (TBLinearMap: ``s1``, ``s2``)
        or ``"rank"`` (the reference code's rank mapping: the unit of rank ``k`` among ``n`` gets
        ``s1 + (s2 - s1) * k / n``).
    normalize: divide every factor by the mean factor over the analysed matrices, so the mean learning rate
        over them is the base rate (the reference's ``tb_lr_normalize``).
    xmin_pos, xmin_rule, min_eigs, filter_zeros, dtype, backend: analysis options
        (:func:`tempbalance.analyze`); ``min_eigs=None`` = the adapter's default; ``dtype=None`` = the precision
        of each weight (float64 weights in float64, the rest in float32).
    interval: when to re-analyse (always also once at construction): an integer = every ``interval`` calls
        of :meth:`step`; ``None`` or ``"epoch"`` = at each :meth:`epoch_end` (a LightningModule's epochs are
        followed by themselves; :class:`~tempbalance.training.cadence.PerEpoch` with ``steps_per_epoch`` also refreshes
        a loop that never calls ``epoch_end()``); ``"adaptive"`` or a :class:`~tempbalance.training.cadence.Adaptive` =
        often while the alphas move, rarely once they settle; :class:`~tempbalance.training.cadence.Budget` = as often
        as keeps the spectral work under a share of the training time; any :class:`~tempbalance.training.cadence.Cadence`.
        A refresh due at :meth:`epoch_end` runs right before the next ``optimizer.step()`` (the weights cannot
        change before it, so the factors are those of an immediate pass), so the pass after a loop's last epoch
        costs nothing unless its results are read (``alphas``, ``factors``, ``history``, ``get_last_lr()``,
        ...), which runs it then; reading ``optimizer.param_groups`` directly between ``epoch_end()`` and the
        next step shows the previous factors. Optimizers that do not step through ``torch.optim.Optimizer``
        get the pass at once.
    lag: ``0`` = analyse synchronously inside :meth:`step` / :meth:`epoch_end`. ``k >= 1`` = copy the weights
        then, analyse the copy in a background thread while training goes on, and apply its factors exactly
        ``k`` steps later (waiting only if the pass has not finished by then). Runs stay deterministic: the
        factors depend on step counts, never on timing. A refresh that falls due while a pass is still
        pending is skipped (its step is recorded in ``skipped_refreshes``); choose an interval larger than ``lag``.
    stagger: ``1`` = every refresh analyses every matrix. ``k >= 2`` = the matrices are split once into ``k``
        slices of equal spectral cost, and each refresh analyses the next slice in turn; the others keep the
        alphas of their last analysis (at most ``k - 1`` refreshes old). A refresh then costs about ``1/k``
        of a full pass. Opt-in because it is an approximation: each record's ``stale_drift`` is the largest
        alpha change of the slice just analysed since its previous analysis, the measured size of the
        staleness. The pass at construction and :meth:`refresh` analyse every matrix.
    num_threads: threads of the spectral pass (``None``: torch's intra-op thread count).
    chunk_bytes: the most memory (weights in the analysis dtype + their Grams) one native call holds; bounds
        the pass's peak extra memory (``None``: 1 GiB).
    include, exclude: regular expressions (``re.search``) on matrix names; only included, non-excluded
        matrices are analysed and tuned.
    remove_first, remove_last: leave the first / last unit untuned (factor 1); under ``compat`` the first /
        last analysed *matrix*, as the reference code does.
    metric: what drives the mapping: ``"alpha"`` or the ablations ``"spectral_norm"``, ``"stable_rank"``,
        ``"alpha_hat"``.
    target: ``"lr"`` or ``"weight_decay"`` (the factors scale each group's weight decay instead).
    compat: reproduce a reference code's learning rates exactly (docs/COMPAT.md): ``"modelbalancing"``
        (EMNLP'24 fine-tuning: blocks, its two-level ``unit="layer"``, norms borrowing the factor of the weight
        before them, factors acting from the update after each pass), ``"tempbalance_cnn"`` (NeurIPS'23 CIFAR:
        per layer, BatchNorm ``bnK`` following ``convK``), ``"tempbalance_lm"`` (NeurIPS'23 LM: per Linear,
        LayerNorms following the Linear before them, the learning rates held between passes) or
        ``"modelbalancing_fno"`` (the FNO trainer: per layer, thresholds on the filtered spectrum),
        ``"alphadecay"`` (NeurIPS'25 LLM pre-training: per-layer weight decays; its mapping is the policy
        :class:`~tempbalance.training.alphadecay.AlphaDecay`, given as ``policy=``, or a preset ``alphadecay-*``) or
        ``"llr"`` (LLR pretraining, AdamW or Muon + AdamW: per matrix, the embedding / LM head / the rest as units of
        their own, with ``policy=tempbalance.training.llr.LLR(...)``, which holds its rules and transitions, or a
        preset ``llr-*``). ``True``:
        ``"modelbalancing"`` when the adapter finds blocks, else ``"tempbalance_cnn"``. Every scheme also
        analyses LoRA without its scaling and conv eigenvalues x 0.5, and maps equal alphas to ``s2``. The
        units are then the tuned matrices (``factors`` has one per matrix).
    preset: a published configuration (:mod:`tempbalance.training.presets`): its arguments, overridden by the ones
        given here, plus its choice keyword (``TempBalance(model, opt, preset="modelbalancing-glue",
        ratio=0.0002, steps_per_epoch=len(loader))``).
    adapter: ``"auto"``, a registered adapter name or an :class:`~tempbalance.adapters.Adapter`.
    include_embeddings: analyse and tune embedding matrices too (an LM head tied to the embedding is the
        embedding).
    process_group: under ``torch.distributed`` (DDP, FSDP2), the group whose ranks share the spectral work
        (each rank analyses its share of the matrices, the results are all-gathered and every rank checks it
        sets the same factors); ``None`` = the default group when torch.distributed is initialised, else a
        single-process run.
    policy: what a refresh turns into factors, as a :class:`~tempbalance.training.policies.Policy` (metric ->
        per-unit value -> factors of one param-group key), or a list of them, one per knob (the learning rate and
        the weight decay from one spectral pass; the first is the primary one: ``factors``, ``unit_alphas``);
        ``None`` = TempBalance's own, built from ``metric``, ``mapping`` (and its parameters), ``normalize`` and
        ``target``, which a given policy decides instead. Under ``compat`` only a policy that reproduces that
        scheme (``Policy.reproduces``: ``AlphaDecay`` for ``"alphadecay"``).
"""

def optimizers_and_schedulers(optimizer: Any, base_scheduler: Any) -> tuple[list[Any], list[Any]]:
    """TempBalance's optimizer argument (one optimizer or a list) and ``base_scheduler`` (one scheduler or None per
    optimizer) as two aligned lists, checked: every optimizer has ``param_groups``, no parameter is in two of them,
    one scheduler entry per optimizer, none of them a TempBalance."""
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    if not optimizers:
        raise ValueError("optimizer: an empty list; give the optimizer(s) TempBalance drives")
    for i, opt in enumerate(optimizers):
        if not hasattr(opt, "param_groups"):
            where = f" {i}" if len(optimizers) > 1 else ""
            raise TypeError(f"optimizer{where} must be a torch optimizer (with param_groups), got {type(opt).__name__}")
    seen: dict[int, int] = {}
    for i, opt in enumerate(optimizers):
        for g in opt.param_groups:
            for p in g["params"]:
                if seen.setdefault(id(p), i) != i:
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} is in optimizer {seen[id(p)]} and "
                                     f"optimizer {i}: each parameter must be trained by one optimizer")
    schedulers = (list(base_scheduler) if isinstance(base_scheduler, (list, tuple))
                  else [base_scheduler] * (len(optimizers) if base_scheduler is None else 1))
    if len(schedulers) != len(optimizers):
        raise ValueError(f"base_scheduler has {len(schedulers)} entries for {len(optimizers)} optimizers; give one "
                         "scheduler (or None) per optimizer, in the same order")
    return optimizers, schedulers


_ARGUMENT_FIELDS = field_names(Arguments)
# what a given policy= decides instead (TempBalance's own policy is built from these)
POLICY_OPTIONS = ("metric", "target", "normalize", *MAPPING_FIELDS)
NAMES: tuple[str, ...] = _ARGUMENT_FIELDS + MAPPING_FIELDS + ANALYSIS_FIELDS


def _defaults() -> dict[str, Any]:
    out = {f.name: f.default for f in dataclasses.fields(Arguments)}
    out.update({f.name: f.default for f in dataclasses.fields(MappingOptions) if f.name in MAPPING_FIELDS})
    out.update({f.name: f.default for f in dataclasses.fields(AnalysisOptions) if f.name in ANALYSIS_FIELDS})
    out["min_eigs"] = None
    return out


def signature(model_type: Any = torch.nn.Module) -> inspect.Signature:
    """The signature TempBalance shows: ``(model, optimizer, *, preset=None, <every keyword of NAMES>,
    **preset_choice)``."""
    kw = inspect.Parameter.KEYWORD_ONLY
    defaults = _defaults()
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model_type),
              inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("preset", kw, default=None, annotation="str | None")]
    params += [inspect.Parameter(n, kw, default=defaults[n]) for n in NAMES]
    params.append(inspect.Parameter("preset_choice", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
    return inspect.Signature(params)
