"""TempBalance: per-unit learning-rate factors from the spectra of the weights, over any optimizer and schedule.

What it does, in order: select the matrices (via the model's adapter, :mod:`tempbalance.selection`) -> refresh
(analyse them, map unit alphas to factors, :meth:`TempBalance.refresh`) -> apply the factors to the param groups.
This module holds the policy: when a refresh is due (:mod:`tempbalance.cadence` decides), what a finished pass
means (factors, history, failures) and the loop around the optimizer. How a pass runs - now, or due some steps on
in a background thread, over every matrix or a slice - is :mod:`tempbalance.passes`; the param-group bookkeeping
(splitting groups by unit, the un-factored LRs, which TempBalance owns an optimizer) is :mod:`tempbalance.groups`.
Under ``compat`` a reference code's :class:`~tempbalance.compat.Plan` decides the matrices, the unit of every
parameter and the mapping; the scheduler adds that reference's timing (a pass due one step later; base rates held
between passes).

How the factors reach the optimizer without ever compounding (SPEC §3): every param group ``i`` has an
un-factored learning rate ``scheduled[i]`` - what the user's schedule says - and a factor ``f[i]`` of its unit; the
group holds ``scheduled[i] * f[i]`` while the optimizer steps. ``step()`` first writes ``scheduled[i]`` back into
the groups, then advances the base scheduler (so chainable schedulers - StepLR, the recursive CosineAnnealingLR,
LinearLR, SequentialLR - read their own value, and LambdaLR-style ones that rewrite ``lr`` from ``base_lrs`` are
unaffected), records the new ``scheduled[i]`` and writes ``scheduled[i] * f[i]`` again.

Typical use::

    sched = get_linear_schedule_with_warmup(opt, 100, 1000)   # any schedule, built first
    tb = TempBalance(model, opt, base_scheduler=sched, interval=200)
    for batch in loader:
        loss(model, batch).backward(); opt.step(); opt.zero_grad()
        tb.step()                                             # also advances sched

Resume: build model, optimizer, base scheduler and TempBalance as before (the group split is deterministic), then
``optimizer.load_state_dict(...)`` and ``tb.load_state_dict(...)`` (which holds the base scheduler's state).
"""
from __future__ import annotations

import collections
import copy
import inspect
import math
import time
import warnings
import weakref
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from . import analysis, compat as _compat, device_lr, distributed, groups as _groups, mapping as _mapping, passes
from . import _warn, presets, selection
from .adapters import MatrixSpec, get_adapter, unwrap_model
from .cadence import Cadence, as_cadence
from .integrations.lightning import epoch_source
from .report import Report

METRICS = ("alpha", "spectral_norm", "stable_rank", "alpha_hat")
TARGETS = ("lr", "weight_decay")
# statuses that mean "the spectral pass failed for this layer" (keep the last factor), as opposed to "cannot be
# fitted" (too few eigenvalues, flat tail: untuned, factor 1)
_FAILED = ("non_finite", "error", "empty")
_STATE_VERSION = 3
# settings added to the checkpoint after version 3 was defined, with the value a state saved without them had
_SETTINGS_ADDED = {"compat": None, "normalize": False}
# tb.step() calls in a row without an optimizer step between them, after this many optimizer steps in a row that
# each saw more than one, is a loop that steps TempBalance twice per update (a single extra call is allowed: a
# GradScaler skips optimizer.step() on overflow and the schedule still advances, as torch's schedulers do)
_REPEATS_TOLERATED = 2
# tb.step() calls in a row with no optimizer step at all between them: a GradScaler skips optimizer.step() while it
# lowers its scale (one halving per skip: 2**16 reaches 1 in 16 skips, Megatron's 2**32 in 32); far more is a loop
# whose optimizer never steps (forgotten, or another optimizer than this TempBalance's), not an overflow
_SKIPS_TOLERATED = 64


def _number(arg: str, v: Any, lo: float | None = None, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{arg} must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ValueError(f"{arg} must be {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


def _steps_through_torch(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the optimizer a wrapper holds as ``.optimizer``, as accelerate's does) is a
    ``torch.optim.Optimizer`` whose ``step`` runs the global step pre-hooks on these very param groups."""
    opt, groups = optimizer, optimizer.param_groups
    for _ in range(4):
        if (isinstance(opt, torch.optim.Optimizer) and getattr(type(opt).step, "hooked", False)
                and opt.param_groups is groups):
            return True
        opt = getattr(opt, "optimizer", None)
        if opt is None or not hasattr(opt, "param_groups"):
            return False
    return False


def _register_step_hook(tb: "TempBalance") -> Any:
    """A global optimizer step pre-hook: before ``tb``'s optimizer steps, it counts the update (for the check on
    repeated ``tb.step()`` calls), notices an epoch that ended in a framework's loop, and runs a due refresh. It
    holds ``tb`` weakly, so an abandoned TempBalance is still collected (and its hook removed)."""
    ref = weakref.ref(tb)

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        me = ref()  # compare the groups now: optimizer.load_state_dict replaces the list
        if me is not None and me._groups.released is None and optimizer.param_groups is me.optimizer.param_groups:
            me._before_optimizer_step()

    return register_optimizer_step_pre_hook(before_step)


class TempBalance(LRScheduler):
    """Layer-wise (block-wise) learning rates from PL_Alpha_Hill, multiplied onto any base schedule.

    It is an LR scheduler in torch's sense (``step()``, ``get_last_lr()``, ``state_dict()``): frameworks that take a
    scheduler take it - HF ``Trainer(optimizers=(opt, tb))``, PyTorch Lightning's
    ``{"optimizer": opt, "lr_scheduler": {"scheduler": tb, "interval": "step"}}``, ``accelerate``'s ``prepare``.

    One optimizer has at most one TempBalance: building a second one on the same optimizer (re-running a notebook
    cell) takes over cleanly - it starts from the un-factored learning rates the first one kept - and the first one
    is detached (its ``step()`` raises). :meth:`close` detaches explicitly.

    Args:
        model: the model being trained (its structure decides which unit every parameter belongs to, frozen
            parameters included: they get their unit's factor once they train).
        optimizer: any torch optimizer (or wrapper exposing ``param_groups``) over the model's parameters.
            ``torch.optim.LBFGS`` is refused (it supports one param group; TempBalance needs one per unit).
        base_scheduler: the user's LR scheduler, built on ``optimizer`` before this object; ``step()`` advances
            it. Without one the groups' current ``lr`` is the (constant) base. Assigning ``tb.base_scheduler``
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
            followed by themselves; :class:`~tempbalance.cadence.PerEpoch` with ``steps_per_epoch`` also refreshes
            a loop that never calls ``epoch_end()``); ``"adaptive"`` or a :class:`~tempbalance.cadence.Adaptive` =
            often while the alphas move, rarely once they settle; :class:`~tempbalance.cadence.Budget` = as often
            as keeps the spectral work under a share of the training time; any :class:`~tempbalance.cadence.Cadence`.
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
            ``"modelbalancing_fno"`` (the FNO trainer: per layer, thresholds on the filtered spectrum). ``True``:
            ``"modelbalancing"`` when the adapter finds blocks, else ``"tempbalance_cnn"``. Every scheme also
            analyses LoRA without its scaling and conv eigenvalues x 0.5, and maps equal alphas to ``s2``. The
            units are then the tuned matrices (``factors`` has one per matrix).
        preset: a published configuration (:mod:`tempbalance.presets`): its arguments, overridden by the ones
            given here, plus its choice keyword (``TempBalance(model, opt, preset="modelbalancing-glue",
            ratio=0.0002, steps_per_epoch=len(loader))``).
        adapter: ``"auto"``, a registered adapter name or an :class:`~tempbalance.adapters.Adapter`.
        include_embeddings: analyse and tune embedding matrices too (an LM head tied to the embedding is the
            embedding).
        process_group: under ``torch.distributed`` (DDP, FSDP2), the group whose ranks share the spectral work
            (each rank analyses its share of the matrices, the results are all-gathered and every rank checks it
            sets the same factors); ``None`` = the default group when torch.distributed is initialised, else a
            single-process run.

    Failures of a spectral pass (non-finite weights, a layer that cannot be analysed any more) leave the
    affected units at their last factor with one warning naming them; all new factors are computed before any
    group is touched, so the optimizer is never half-updated. Misuse that would silently give wrong learning
    rates is an error naming what to do instead: ``tb.step()`` called twice per optimizer step, a scheduler built
    after TempBalance, param groups added that the base scheduler does not cover.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, preset: str | None = None,
                 **kwargs: Any):
        # the arguments are those of _setup (the signature shown is set below the class); a preset's values are
        # overridden by the ones given explicitly, which only a wrapper can tell from defaults
        if preset is not None:
            kwargs = presets.get(preset, **kwargs)
        unknown = sorted(set(kwargs) - set(_ARGUMENTS))
        if unknown:
            raise TypeError(f"TempBalance got unexpected keyword argument(s) {unknown}"
                            + ("" if preset is not None else "; a preset's choice (ratio=, model=, ...) needs preset="))
        self._setup(model, optimizer, **kwargs)

    def _setup(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        base_scheduler: Any = None,
        unit: str | None = None,
        mapping: str = "sigmoid",
        s_lo: float = 2.0,
        s_hi: float = 1.0,
        tau: float = 10.0,
        s1: float = 0.5,
        s2: float = 1.5,
        normalize: bool = False,
        xmin_pos: float = 2.0,
        xmin_rule: str = "median",
        interval: int | str | Cadence | None = None,
        lag: int = 0,
        stagger: int = 1,
        num_threads: int | None = None,
        chunk_bytes: int | None = None,
        min_eigs: int | None = None,
        filter_zeros: bool = False,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        remove_first: bool = False,
        remove_last: bool = False,
        metric: str = "alpha",
        target: str = "lr",
        compat: bool | str = False,
        adapter: Any = "auto",
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        include_embeddings: bool = False,
        process_group: Any = None,
    ):
        # LRScheduler.__init__ is not called on purpose: it would step and rewrite the groups' lr; the class is a
        # base so that frameworks' scheduler checks (Lightning, accelerate) accept a TempBalance.
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"optimizer must be a torch optimizer (with param_groups), got {type(optimizer).__name__}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        cadence = as_cadence(interval)
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise ValueError(f"lag must be an integer >= 0 (0 = synchronous), got {lag!r}")
        if isinstance(stagger, bool) or not isinstance(stagger, int) or stagger < 1:
            raise ValueError(f"stagger must be an integer >= 1 (1 = every matrix at every refresh), got {stagger!r}")
        for arg, v in (("remove_first", remove_first), ("remove_last", remove_last), ("normalize", normalize)):
            if not isinstance(v, bool):
                raise ValueError(f"{arg} must be True or False, got {v!r}")
        if not isinstance(compat, bool) and compat not in _compat.SCHEMES:
            raise ValueError(f"compat must be True, False or one of {tuple(_compat.SCHEMES)}, got {compat!r}")
        if compat and stagger > 1:
            raise ValueError("stagger >= 2 analyses a slice of the matrices per refresh (an approximation); compat "
                             "reproduces a reference that analyses every matrix at every refresh: use stagger=1")
        if compat and include_embeddings:
            raise ValueError("include_embeddings=True: no reference code analyses embeddings; drop it with compat")
        self.model, self.optimizer = model, optimizer
        self.adapter = get_adapter(model, adapter)
        if compat and hasattr(self.adapter, "lora_scaling"):
            self.adapter.lora_scaling = False
        self.unit = selection.unit_mode(self.adapter, unit)
        self.interval, self.cadence, self.lag, self.metric, self.target = interval, cadence, lag, metric, target
        self.map_options = dict(mapping=mapping, tau=_number("tau", tau, 0, strict=True), s_lo=_number("s_lo", s_lo, 0),
                                s_hi=_number("s_hi", s_hi, 0), s1=_number("s1", s1), s2=_number("s2", s2),
                                compat=bool(compat), backend=backend)
        self.normalize = normalize
        _mapping.lr_factors([1.0], **self.map_options)  # validates mapping/backend now, not at the first refresh
        self.analysis_options = dict(
            xmin_pos=xmin_pos, xmin_rule=xmin_rule, dtype=dtype, backend=backend,
            min_eigs=getattr(self.adapter, "min_eigs", analysis.DEFAULT_MIN_EIGS) if min_eigs is None else min_eigs,
            conv_scale=0.5 if compat else 1.0, num_threads=num_threads,
            chunk_bytes=chunk_bytes, filter_zeros=filter_zeros,
        )
        analysis.check_options(**self.analysis_options)
        self._check_base_scheduler(base_scheduler)
        self._dist = distributed.Coordinator.maybe(process_group)
        if self._dist is not None and lag:
            raise ValueError("lag >= 1 (background passes) is not supported under torch.distributed yet; use lag=0")
        if self._dist is not None and stagger > 1:
            raise ValueError("stagger >= 2 is not supported under torch.distributed yet (the ranks already share "
                             "each pass); use stagger=1")

        # select the matrices (and the parameters their units drive)
        chosen = selection.select(model, optimizer, self.adapter, unit=unit, include=include, exclude=exclude,
                                  remove_first=remove_first, remove_last=remove_last,
                                  include_embeddings=include_embeddings, compat=compat,
                                  min_eigs=self.analysis_options["min_eigs"], normalize=normalize)
        self._specs, self.units, self.unit, self._plan = chosen.specs, chosen.units, chosen.unit, chosen.plan
        self._spec_units, self._skipped, self._fingerprint = chosen.spec_units, chosen.skipped, chosen.fingerprint
        self.compat = self._plan.scheme.name if self._plan is not None else None
        self._first_min_eigs: int | None = None  # the initial pass's min_eigs, where a scheme's differs
        if self._plan is not None:  # a scheme counts the eigenvalues a pass needs its own way
            min_eigs = self.analysis_options["min_eigs"]
            self.analysis_options["min_eigs"] = self._plan.analysis_min_eigs(min_eigs, first=False)
            self._first_min_eigs = self._plan.analysis_min_eigs(min_eigs, first=True)
        self.stagger = stagger

        self._factors: dict[str, float] = {u: 1.0 for u in self.units}
        self._unit_values: dict[str, float] = {u: math.nan for u in self.units}
        self._alphas: dict[str, float] = {}
        self._alpha_std = math.nan
        self.step_count = 0
        self._step_count = 0  # torch's LRScheduler counter; accelerate's wrapper counts accumulation steps in it
        self.epoch = 0
        self._spectral_seconds = 0.0
        self._blocking_seconds = 0.0
        self._history: list[dict[str, Any]] = []
        self._last_report: Report | None = None
        self._refresh_due = False
        self._warned: set[str] = set()
        self._calls_since_update = 0  # tb.step() calls since the optimizer last stepped
        self._repeats = 0  # optimizer steps in a row that were each followed by more than one tb.step()
        self._epoch_source = epoch_source(unwrap_model(model))
        self._source_epoch: int | None = None
        self._deferred: tuple[device_lr.DeviceRefresh, list[int], float] | None = None  # see _settle
        self._callbacks: collections.OrderedDict[int, Callable[[dict[str, Any]], None]] = collections.OrderedDict()
        self._last_commit = (0, time.perf_counter())  # (step, clock) of the last applied refresh, for Budget
        self._step_hook = None
        # steps from a pass to its factors: ``lag``, and at least one under a reference whose factors act from the
        # update after the pass (ModelBalancing: the pass at the top of step t, the factors after update t)
        next_update = self._plan is not None and self._plan.scheme.factors_act_from == "next_update"
        self._passes = passes.PassRunner(self._specs, [shape for _, shape in self._fingerprint], lag=lag,
                                         delay=max(lag, 1) if next_update else lag, stagger=stagger)
        self._held: list[float] | None = None  # the base rates held between passes (compat="tempbalance_lm")
        self._initial_pass(deferred=next_update)
        # the optimizer's groups, split by unit (a previous TempBalance on this optimizer is released first)
        self._groups = _groups.FactoredGroups(optimizer, chosen.owner, target=target, params=chosen.params,
                                              scheduler=base_scheduler)
        self._base_scheduler = base_scheduler
        if self._plan is not None and self._plan.scheme.holds_between_passes:
            self._held = list(self._groups.scheduled)
        self._apply()
        self._step_hook = _register_step_hook(self) if _steps_through_torch(optimizer) else None
        self._warn_if_nothing_tuned()

    # --- setup: the base scheduler, the first pass --------------------------------------------------------------
    def _check_base_scheduler(self, s: Any) -> None:
        if s is None:
            if any("initial_lr" in g for g in self.optimizer.param_groups):
                warnings.warn(
                    "TempBalance: the optimizer's groups have 'initial_lr', so an LR scheduler seems attached; pass "
                    "it as base_scheduler= so TempBalance steps it (a scheduler stepped outside TempBalance "
                    "overwrites or compounds the factors)", UserWarning, stacklevel=4)
            return
        if isinstance(s, TempBalance):
            raise TypeError("base_scheduler is a TempBalance; pass the LR scheduler it should step")
        if not callable(getattr(s, "step", None)):
            raise TypeError(f"base_scheduler must have a step() method, got {type(s).__name__}")
        for sub in _groups.schedulers_in(s):
            opt = getattr(sub, "optimizer", None)
            if opt is not None and opt is not self.optimizer and opt.param_groups is not self.optimizer.param_groups:
                raise ValueError(f"base_scheduler ({type(sub).__name__}) was built on a different optimizer than the "
                                 "one given to TempBalance")

    @property
    def base_scheduler(self) -> Any:
        """The LR scheduler :meth:`step` advances (None: the groups' lr is a constant base)."""
        return self._base_scheduler

    @base_scheduler.setter
    def base_scheduler(self, scheduler: Any) -> None:
        """Attach (or with None, detach) the base scheduler after construction: checked like the argument, and a
        scheduler built after TempBalance - its base LRs are the factored ones - is refused."""
        self._check_attached()
        if scheduler is self._base_scheduler:
            return
        if scheduler is not None:
            self._check_base_scheduler(scheduler)
            self._groups.attach_scheduler(scheduler)
        self._base_scheduler = scheduler

    def _initial_pass(self, deferred: bool) -> None:
        """The analysis at construction, before the optimizer is touched (it may raise): applied now, or
        (``deferred``) held as a pass due the runner's ``delay`` steps on, as the reference's first one."""
        options = (None if self._first_min_eigs is None
                   else dict(self.analysis_options, min_eigs=self._first_min_eigs))
        if not deferred:
            self._refresh_now(options=options)
            return
        start = time.perf_counter()
        report = self._analyze(self._specs, options)
        self._passes.add_finished(report, self.step_count, time.perf_counter() - start)

    def _warn_if_nothing_tuned(self) -> None:
        """One warning when no group of the optimizer gets a factor from the analysis (all units untuned, or none
        of the optimizer's parameters in a unit); the reasons are in ``last_report`` (or the initial pass, while
        it waits for its due step)."""
        if not self._specs:
            return  # warned at selection
        report = self._last_report
        if report is None and self._passes.pending is not None:
            report = self._passes.pending.report()
            tuned = {u for u, r in zip(self._spec_units, report.rows)
                     if r.ok and math.isfinite(getattr(r, self.metric))}
        else:
            tuned = {u for u, v in self._unit_values.items() if math.isfinite(v)}
        if not tuned:
            rows = report.rows if report is not None else []
            reasons = "; ".join(r.reason for r in rows if not r.ok and r.reason)[:400]
            why = f"no analysed matrix could be fitted ({reasons})"
        elif not any(u in tuned for u in self._groups.units):
            why = f"no param group of the optimizer holds a parameter of the tuned units ({sorted(tuned)[:4]}...)"
        else:
            return
        warnings.warn(f"TempBalance: nothing is tuned: {why}; every group keeps factor 1", UserWarning, stacklevel=3)

    # --- the loop -----------------------------------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> None:
        """Call once after each ``optimizer.step()``: advances the base scheduler (``args`` are passed to it,
        e.g. the metric of ReduceLROnPlateau), re-analyses every ``interval`` calls, applies base lr x factor."""
        self._check_attached()
        self._check_repeats()
        self._settle()
        self._sync_groups(strict=True)
        self._calls_since_update += 1
        if self._step_hook is None:  # the optimizer's step is not seen: now is the earliest look after it
            self._poll_epochs(before_step=True)
        self._run_due()
        book = self._groups
        if self._base_scheduler is not None:
            book.restore_base()  # the base scheduler reads and writes its own, un-factored value
            try:
                self._base_scheduler.step(*args, **kwargs)
            except BaseException:
                self._apply()  # the groups never stay un-factored
                raise
            book.capture_base()
        self.step_count += 1
        self._collect_due()
        if self.cadence.due_after_step(self.step_count):
            self._start_refresh()
        self._apply()

    def epoch_end(self) -> None:
        """Call at the end of every epoch: counts it, and with a per-epoch cadence (``interval=None``) re-analyses
        before the next optimizer step (``lag=0``) or starts the background pass then. (A LightningModule's epochs
        are followed without it; calling it hands the epoch count back to your loop.)"""
        self._check_attached()
        self._settle()
        self._epoch_source = None
        self._end_epoch()

    def _end_epoch(self) -> None:
        self.epoch += 1
        if self.cadence.due_at_epoch_end(self.epoch):
            self._mark_due()

    def _poll_epochs(self, before_step: bool = False) -> None:
        """Count the epochs that ended without ``epoch_end()``: those a framework's loop finished since the last
        look (a LightningModule's trainer), and - ``before_step``, when the next epoch has begun, so an
        ``epoch_end()`` after the last step of an epoch is not missed - those a cadence that knows the epoch length
        saw pass (one warning)."""
        if self._epoch_source is not None and (now := self._epoch_source()) is not None:
            if self._source_epoch is None:
                self._source_epoch = now
            while self._source_epoch < now:
                self._source_epoch += 1
                self._end_epoch()
        if before_step and self.cadence.missed_epoch_end(self.step_count):
            self._warn_once("no_epoch_end", f"TempBalance: {self.step_count} optimizer steps and no epoch_end(): "
                            "the per-epoch cadence counts an epoch every "
                            f"{getattr(self.cadence, 'steps_per_epoch', '?')} steps instead. Call tb.epoch_end() at "
                            "each epoch's end (HF Trainer: callbacks=[TempBalanceCallback(tb)]) to refresh at the "
                            "true epoch ends")
            self.epoch += 1
            self._mark_due()

    def _before_optimizer_step(self) -> None:
        """The optimizer is about to step (from the step pre-hook)."""
        self._repeats = self._repeats + 1 if self._calls_since_update > 1 else 0
        self._calls_since_update = 0
        self._poll_epochs(before_step=True)
        self._run_due(settle=False)

    def _check_repeats(self) -> None:
        """Refuse a loop that calls ``tb.step()`` more than once per optimizer step, or again and again with no
        optimizer step at all, before it changes anything (needs the step hook to see the optimizer's steps)."""
        if self._step_hook is not None and self._calls_since_update >= _SKIPS_TOLERATED:
            raise RuntimeError(
                f"TempBalance.step() was called {self._calls_since_update} times in a row with no optimizer step "
                "in between (since TempBalance was built or the optimizer last stepped): every call advances the base "
                "schedule and the refresh interval by one step while nothing trains. Call optimizer.step() before "
                "each tb.step(), on the optimizer TempBalance was built with (a new optimizer needs a new "
                "TempBalance); to resume a run, use tb.load_state_dict(...) instead of stepping it forward")
        if self._step_hook is not None and self._calls_since_update >= 1 and self._repeats >= _REPEATS_TOLERATED:
            raise RuntimeError(
                f"TempBalance.step() was called more than once after each of the last {self._repeats} "
                "optimizer steps: every call advances the base schedule and the refresh interval by one step. "
                "Call it once per optimizer.step(): don't combine auto_step(tb) with explicit tb.step() calls, don't "
                "pass TempBalance to a framework that steps it and step it yourself too (under accelerate with "
                "several processes, a prepared scheduler is stepped once per process: don't pass TempBalance to "
                "accelerator.prepare(), call tb.step() after each optimizer update)")

    def _mark_due(self) -> None:
        """A refresh is due: run it when the next optimizer step starts (the step hook), or now without one."""
        self._refresh_due = True
        if self._step_hook is None:
            self._run_due()

    def _run_due(self, settle: bool = True) -> None:
        """Run the refresh that fell due (synchronously or as a background pass) and apply the factors; first
        commit a refresh that ran on the GPU (_settle), unless ``settle=False`` (before an optimizer step: the GPU
        pass and the step stay queued behind each other) and no refresh is due."""
        if self._groups.released is not None:
            return
        self._poll_epochs()
        if settle or self._refresh_due:
            self._settle()
        if self._refresh_due:
            self._refresh_due = False
            self._start_refresh()
            self._apply()

    def _sync_groups(self, strict: bool) -> bool:
        """Bring the bookkeeping up to date with the optimizer: adopt groups added since, take LRs set outside as
        the new base (one warning), and refuse a scheduler built after TempBalance. ``strict=False`` (inside the
        optimizer's step) never raises: what it cannot take is left alone for the next ``tb.step()`` to refuse.
        Returns whether the groups can be written."""
        book = self._groups
        try:
            book.adopt_added(self._base_scheduler)
        except (ValueError, RuntimeError):
            if strict:
                raise
            return False
        late = book.scheduler_added()
        if late:
            if strict:
                raise RuntimeError(
                    f"TempBalance: param group(s) {late[:8]} got 'initial_lr' after TempBalance was built: an LR "
                    "scheduler was created on this optimizer afterwards, from the factored learning rates (base x "
                    "factor), and stepping it applies the factors twice. Build the scheduler first and pass it as "
                    "TempBalance(..., base_scheduler=sched); TempBalance steps it")
            return False
        changed = book.sync_external()
        held = self._held_base()
        for i in changed if held is not None else []:
            held[i] = book.scheduled[i]  # a value set outside is the new base, held too
        if changed:
            self._warn_once("external", f"TempBalance: the {self.target} of param group(s) {changed[:8]} was changed "
                            "outside TempBalance; taking it as the new base value. Pass your scheduler as "
                            "base_scheduler= so TempBalance steps it.")
        return True

    def _apply(self) -> None:
        if self._deferred is not None:
            return  # the GPU pass wrote base x its factor into the lr tensors; _settle brings the floats up to date
        if self._groups.released is None and self._sync_groups(strict=False):
            self._groups.apply(self._factors, base=self._held_base())

    def _held_base(self) -> list[float] | None:
        """Under a reference that holds the base rate between passes (compat="tempbalance_lm"): the base value of
        every group at the last pass (groups adopted since hold the value they came with); else None."""
        held = self._held
        if held is not None and len(held) < len(self._groups.scheduled):
            held += self._groups.scheduled[len(held):]
        return held

    def _check_attached(self) -> None:
        if self._groups.released is not None:
            raise RuntimeError(f"TempBalance: {self._groups.released}; this object no longer manages the "
                               "optimizer (one optimizer has at most one TempBalance)")

    def _warn_once(self, key: str, message: str, category: type = UserWarning) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _warn.warn(message, category)

    # --- analysis ---------------------------------------------------------------------------------------------
    def refresh(self) -> Report:
        """Analyse the weights now, synchronously, and apply the new factors (exceptions propagate; groups are
        untouched then). A pending background pass is dropped: this one is newer."""
        self._check_attached()
        self._refresh_due = False
        self._settle()
        self._passes.drop()
        report = self._refresh_now()
        self._apply()
        return report

    def _refresh_now(self, indices: list[int] | None = None, fused: bool = False,
                     options: dict[str, Any] | None = None) -> Report | None:
        """Analyse the live weights (the matrices ``indices``, default all; ``options``: analysis options other
        than ``analysis_options``) and commit the factors; the loop waits for all of it - except with ``fused`` on
        CUDA weights and tensor lrs, where the pass writes the factors into the lr tensors on the GPU and the
        commit waits until _settle (returns None then; not with compat or normalize, which the GPU mapping does
        not do)."""
        indices = list(range(len(self._specs))) if indices is None else indices
        start = time.perf_counter()
        specs = [self._specs[i] for i in indices]
        if (fused and self._plan is None and not self.normalize and self.target == "lr" and self._dist is None
                and len(indices) == len(self._specs)
                and device_lr.tensor_lrs(self.optimizer.param_groups) is not None):
            index = {u: k for k, u in enumerate(self.units)}
            pending = device_lr.fused_refresh(
                specs, self.analysis_options, groups=self.optimizer.param_groups, base=self._groups.scheduled,
                group_unit=[index.get(u, -1) for u in self._groups.units],
                unit_index=[index[self._spec_units[i]] for i in indices], n_units=len(self.units), metric=self.metric,
                previous=[self._factors.get(u, 1.0) for u in self.units], map_options=self.map_options)
            if pending.written:
                self._deferred = (pending, indices, time.perf_counter() - start)
                return None
            report = pending.report()
        else:
            report = self._analyze(specs, options)
        return self._commit(report, indices, started_step=self.step_count, blocking=time.perf_counter() - start)

    def _settle(self) -> None:
        """Commit a refresh whose factors the GPU already wrote into the lr tensors (device_lr): waits for it once
        and brings the floats (factors, report, history) and the groups' bookkeeping up to date. Runs before
        anything reads them: the next step(), epoch_end(), every accessor, state_dict(), close()."""
        if self._deferred is None:
            return
        pending, indices, blocking = self._deferred
        self._deferred = None
        try:
            self._commit(pending.report(), indices, started_step=self.step_count, blocking=blocking)
        except Exception as e:  # noqa: BLE001 - as a synchronous pass: the units keep their factors (so did the GPU)
            self._warn_failed(e)
        if self._groups.released is None and self._groups.in_sync():
            self._groups.apply(self._factors)  # the values the GPU wrote, now in the bookkeeping too

    def add_refresh_callback(self, fn: Callable[[dict[str, Any]], None]) -> RemovableHandle:
        """Call ``fn(record)`` after every applied refresh with its ``history`` record (step, epoch, seconds,
        blocking_seconds, started_step, unit_values, factors, alpha_std, failed, alphas, analysed: how many
        matrices this pass analysed, stale_drift: the largest alpha change among them since their previous
        analysis). For loggers; an exception in ``fn`` is turned into a warning so training goes on. Returns a
        handle whose ``remove()`` unregisters ``fn``."""
        if not callable(fn):
            raise TypeError(f"refresh callback must be callable, got {type(fn).__name__}")
        handle = RemovableHandle(self._callbacks)
        self._callbacks[handle.id] = fn
        return handle

    def _analyze(self, specs: list[MatrixSpec], options: dict[str, Any] | None = None) -> Report:
        options = self.analysis_options if options is None else options
        if self._dist is not None:
            return self._dist.analyze_specs(specs, **options)
        return analysis.analyze_specs(specs, **options)

    def _start_refresh(self) -> None:
        """A refresh is due: its slice analysed and applied now, or (the runner's ``delay >= 1``) started as a
        pass due that many steps on - a snapshot analysed in the background (``lag >= 1``), or the live weights
        analysed now (the reference's timing under compat with ``lag=0``)."""
        try:
            if self._passes.delay:
                self._passes.start(self.step_count, self._analyze)
            else:
                self._refresh_now(self._passes.take_slice(), fused=True)
        except Exception as e:  # noqa: BLE001 - a failed pass must not stop training; factors are kept
            self._warn_failed(e)

    def _collect_due(self) -> None:
        """Apply the pass due at this step, waiting for it if it has not finished."""
        due = self._passes.take_due(self.step_count)
        if due is None:
            return
        start = time.perf_counter()
        try:
            report = due.report()
            self._commit(report, due.indices, started_step=due.started_step,
                         blocking=due.snapshot_seconds + time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001
            self._warn_failed(e)

    def wait(self) -> None:
        """Start a due refresh, then block until a pending background pass has finished (it is still applied at
        its due step)."""
        self._run_due()
        self._passes.wait()

    def close(self) -> None:
        """Detach from the optimizer: drop a due or pending pass, stop the background thread, remove the optimizer
        step hook and give the groups back their un-factored learning rates (the base schedule's). Reads
        (``history``, ``factors``, ...) keep working; ``step()`` then raises. Collecting the object does the same."""
        self._settle()
        self._refresh_due = False
        self._passes.drop()
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        self._passes.shutdown(wait=True)
        self._groups.release("this TempBalance was closed")

    def __del__(self) -> None:
        hook = getattr(self, "_step_hook", None)
        if hook is not None:
            hook.remove()
        runner = getattr(self, "_passes", None)
        if runner is not None:
            runner.shutdown(wait=False)
        book = getattr(self, "_groups", None)
        if book is not None:
            try:
                book.release("this TempBalance was collected")
            except Exception:  # noqa: BLE001 - at interpreter exit the optimizer may be gone already
                pass

    def _warn_failed(self, e: BaseException) -> None:
        _warn.warn(f"TempBalance: spectral pass at step {self.step_count} failed ({type(e).__name__}: {e}); "
                   "every unit keeps its factor", RuntimeWarning)

    def _map(self, rows: list, failed: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The value (mean metric) and new factor of every unit from a pass's ``rows``; units in ``failed`` get
        NaN (they keep their factor). Under compat every tuned matrix is a unit, mapped by the reference's
        rules (:meth:`tempbalance.compat.Plan.factors`)."""
        vals = np.array([getattr(r, self.metric) if r.ok else math.nan for r in rows], dtype=np.float64)
        vals[~np.isfinite(vals)] = math.nan
        if self._plan is not None:
            vals[[s.name in failed for s in self._specs]] = math.nan
            options = {k: v for k, v in self.map_options.items() if k != "compat"}
            return vals, self._plan.factors(vals, **options)
        index = {u: k for k, u in enumerate(self.units)}
        unit_idx = np.array([index[u] for u in self._spec_units], dtype=np.int64)
        means = _mapping.unit_means(vals, unit_idx, len(self.units), backend=self.map_options["backend"])
        for u in failed:
            means[index[u]] = math.nan
        factors = _mapping.lr_factors(means, **self.map_options)
        if self.normalize:  # mean factor 1 over the analysed matrices (a unit's factor counts once per matrix)
            counts = np.bincount(unit_idx, minlength=len(self.units)).astype(np.float64)
            factors = _mapping.normalize_factors(factors, counts, backend=self.map_options["backend"])
        return means, factors

    def _commit(self, report: Report, indices: list[int], *, started_step: int, blocking: float) -> Report:
        """Map a finished pass over the matrices ``indices`` to factors and commit them (all computed before
        anything changes); the other matrices keep the rows of their last analysis. Returns the full report."""
        if [r.name for r in report.rows] != [self._specs[i].name for i in indices]:
            raise RuntimeError("analysis returned rows that do not match the analysed matrices")
        report.skipped = list(self._skipped)
        if len(indices) == len(self._specs):
            fresh, rows = set(range(len(self._specs))), list(report.rows)
        else:
            if self._last_report is None:
                raise RuntimeError("a partial pass needs a full one before it")
            fresh, rows = set(indices), list(self._last_report.rows)
            for i, r in zip(indices, report.rows):
                rows[i] = r
            report = Report(rows=rows, seconds=report.seconds, settings=report.settings, skipped=report.skipped)
        prev_alpha = self._alphas
        stale_drift = max((abs(rows[i].alpha - prev_alpha[rows[i].name]) for i in fresh
                           if math.isfinite(rows[i].alpha) and math.isfinite(prev_alpha.get(rows[i].name, math.nan))),
                          default=math.nan)
        failed: dict[str, list[str]] = {}  # units that keep their factor: a matrix of theirs failed
        newly_failed: set[str] = set()  # ... in this pass (a stale failure was warned about when it happened)
        for i, (u, r) in enumerate(zip(self._spec_units, rows)):
            if r.status in _FAILED:
                failed.setdefault(u, []).append(r.reason or f"layer '{r.name}': {r.status}")
                if i in fresh:
                    newly_failed.add(u)
        values, factors = self._map(rows, failed)
        new = {u: (self._factors.get(u, 1.0) if u in failed else float(factors[k])) for k, u in enumerate(self.units)}
        if not all(math.isfinite(f) and f > 0 for f in new.values()):
            raise RuntimeError(f"non-finite or non-positive factors {new}")
        if self._dist is not None:
            self._dist.check_identical(new, step=self.step_count)
        # all computed: commit
        previous = self._unit_values
        self._factors = new
        self._unit_values = {u: (self._unit_values.get(u, math.nan) if u in failed else float(values[k]))
                             for k, u in enumerate(self.units)}
        if self._held is not None:
            self._held = list(self._groups.scheduled)  # the reference holds the base rate of this pass until the next
        self._alphas = {r.name: float(r.alpha) for r in rows}
        ok = np.array([r.alpha for r in rows if r.ok and math.isfinite(r.alpha)], dtype=np.float64)
        self._alpha_std = float(ok.std()) if ok.size else math.nan
        self._spectral_seconds += report.seconds
        self._blocking_seconds += blocking
        self._last_report = report
        record = dict(step=self.step_count, epoch=self.epoch, started_step=started_step, seconds=report.seconds,
                      blocking_seconds=blocking, unit_values=dict(self._unit_values), factors=dict(new),
                      alpha_std=self._alpha_std, failed=sorted(failed), alphas=dict(self._alphas),
                      analysed=len(fresh), stale_drift=stale_drift)
        self._history.append(record)
        drift = [abs(self._unit_values[u] - previous[u]) for u in self.units
                 if math.isfinite(self._unit_values[u]) and math.isfinite(previous.get(u, math.nan))]
        now = time.perf_counter()
        steps = self.step_count - self._last_commit[0]
        step_seconds = max(now - self._last_commit[1] - blocking, 0.0) / steps if steps > 0 else math.nan
        self._last_commit = (self.step_count, now)
        self.cadence.observe(self.step_count, max(drift) if drift else math.nan, blocking_seconds=blocking,
                             step_seconds=step_seconds)
        if newly_failed:
            reasons = "; ".join(r for u in sorted(newly_failed) for r in failed[u][:2])
            _warn.warn(f"TempBalance: spectral pass at step {self.step_count} failed for unit(s) "
                       f"{sorted(newly_failed)} ({reasons}); they keep their previous factor", RuntimeWarning)
        for fn in list(self._callbacks.values()):
            try:
                fn(record)
            except Exception as e:  # noqa: BLE001 - a logger must not stop training
                _warn.warn(f"TempBalance: refresh callback {getattr(fn, '__name__', fn)!r} raised "
                           f"{type(e).__name__}: {e}", RuntimeWarning)
        return report

    # --- read access (each runs a refresh that fell due and has not run yet) ----------------------------------
    @property
    def alphas(self) -> dict[str, float]:
        """PL_Alpha_Hill of every analysed matrix at the last refresh (NaN where it could not be fitted)."""
        self._run_due()
        return dict(self._alphas)

    @property
    def unit_alphas(self) -> dict[str, float]:
        """Per unit, the mean ``metric`` (alpha by default) of its matrices that drove the last mapping."""
        self._run_due()
        return dict(self._unit_values)

    @property
    def factors(self) -> dict[str, float]:
        """Current LR (or weight-decay) factor per unit; parameters outside every unit have factor 1."""
        self._run_due()
        return dict(self._factors)

    @property
    def alpha_std(self) -> float:
        """Standard deviation of alpha across the analysed matrices at the last refresh (the papers' STD)."""
        self._run_due()
        return self._alpha_std

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per applied refresh (see :meth:`add_refresh_callback`), oldest first."""
        self._run_due()
        return self._history

    @property
    def last_report(self) -> Report | None:
        """The :class:`~tempbalance.report.Report` of the last applied refresh."""
        self._run_due()
        return self._last_report

    @property
    def spectral_seconds(self) -> float:
        """Wall seconds of every applied spectral pass so far (background passes included)."""
        self._run_due()
        return self._spectral_seconds

    @property
    def blocking_seconds(self) -> float:
        """Seconds the training loop waited for spectral work (all of it for synchronous passes)."""
        self._run_due()
        return self._blocking_seconds

    @property
    def skipped_refreshes(self) -> list[int]:
        """The steps at which a refresh fell due while a background pass was pending, and was skipped."""
        return self._passes.skipped_refreshes

    @property
    def group_units(self) -> list[str | None]:
        """The unit of every param group (None: not tuned)."""
        return list(self._groups.units)

    def get_last_lr(self) -> list[float]:
        """The learning rate of every param group as the optimizer uses it (base x factor)."""
        self._run_due()
        return [_groups.read(g, "lr") for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """As :meth:`get_last_lr` (TempBalance computes no closed form of its own)."""
        return self.get_last_lr()

    def get_base_lr(self) -> list[float]:
        """The un-factored learning rate of every group (what the base schedule says)."""
        if self.target == "lr":
            return list(self._groups.scheduled)
        return [_groups.read(g, "lr") for g in self.optimizer.param_groups]

    # --- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, the base scheduler's state included (plain Python + tensors,
        loadable with ``torch.load(weights_only=True)``), nested by component: ``groups``, ``cadence``,
        ``base_scheduler``, ``passes``, ``results``. A pending background pass is waited for and saved with its due
        step, so the resumed run applies it at the same step; a refresh that fell due and has not run is saved as
        due and runs before the resumed run's first optimizer step."""
        self._settle()
        return dict(
            version=_STATE_VERSION,
            settings=self._settings(),
            fingerprint=[list(x) for x in self._fingerprint],
            groups=self._groups.state_dict(),
            cadence=self.cadence.state_dict(),
            base_scheduler=self._base_scheduler.state_dict() if self._base_scheduler is not None else None,
            progress=dict(step_count=self.step_count, epoch=self.epoch, source_epoch=self._source_epoch,
                          refresh_due=self._refresh_due, held_base=copy.copy(self._held_base())),
            passes=self._passes.state_dict(on_failure=self._warn_failed),
            results=dict(factors=dict(self._factors), unit_values=dict(self._unit_values), alphas=dict(self._alphas),
                         alpha_std=self._alpha_std, spectral_seconds=self._spectral_seconds,
                         blocking_seconds=self._blocking_seconds, history=copy.deepcopy(self._history),
                         last_report=(self._last_report.state_dict() if self.stagger > 1 and self._last_report
                                      else None)),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything changes: a different model, unit
        mode, cadence or param-group layout is a ``ValueError`` saying what differs, and on any error this object,
        its optimizer's groups and its base scheduler are exactly as before. The groups get base lr x factor as
        saved. (Param groups added to the optimizer since construction are adopted first, as ``step()`` would.)"""
        self._check_attached()
        self._groups.adopt_added(self._base_scheduler)
        self._check_state(state)
        if self._base_scheduler is not None:
            before = copy.deepcopy(self._base_scheduler.state_dict())
            try:
                self._base_scheduler.load_state_dict(state["base_scheduler"])
            except BaseException:
                self._base_scheduler.load_state_dict(before)
                raise
        self._groups.load_state_dict(state["groups"])
        self.cadence.load_state_dict(state["cadence"])
        progress, results = state["progress"], state["results"]
        self.step_count, self.epoch = int(progress["step_count"]), int(progress["epoch"])
        source = progress.get("source_epoch")
        self._source_epoch = None if source is None else int(source)
        self._calls_since_update = self._repeats = 0
        self._factors = {u: float(f) for u, f in results["factors"].items()}
        self._unit_values = {u: float(v) for u, v in results["unit_values"].items()}
        self._alphas = {n: float(a) for n, a in results["alphas"].items()}
        self._alpha_std = float(results["alpha_std"])
        self._spectral_seconds = float(results["spectral_seconds"])
        self._blocking_seconds = float(results["blocking_seconds"])
        self._history = copy.deepcopy(list(results["history"]))
        if results.get("last_report") is not None:
            self._last_report = Report.from_state_dict(results["last_report"])
        self._last_commit = (self.step_count, time.perf_counter())
        self._passes.load_state_dict(state["passes"])
        self._deferred = None  # superseded: the groups get the loaded factors below
        self._refresh_due = bool(progress["refresh_due"])
        if self._held is not None:
            self._held = [float(v) for v in progress["held_base"]]
        # as saved: the groups' values now (a loaded optimizer's) are not a base
        self._groups.apply(self._factors, base=self._held_base())

    def _check_state(self, state: Any) -> None:
        """Every check of :meth:`load_state_dict`, before it changes anything."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"TempBalance.load_state_dict: not a TempBalance state_dict of version {_STATE_VERSION} "
                             f"(got version {found!r}); save it with this tempbalance version")
        parts = {"settings": (), "fingerprint": None, "groups": (), "cadence": (), "base_scheduler": None,
                 "progress": ("step_count", "epoch", "refresh_due"),
                 "passes": passes.STATE_KEYS,
                 "results": ("factors", "unit_values", "alphas", "alpha_std", "spectral_seconds", "blocking_seconds",
                             "history")}
        for part, keys in parts.items():
            if part not in state or (keys is not None and (not isinstance(state[part], dict)
                                                           or any(k not in state[part] for k in keys))):
                raise ValueError(f"TempBalance.load_state_dict: the state has no valid {part!r} part "
                                 f"(expected keys {list(keys or [])})")
        for key, value in self._settings().items():  # first: a setting that differs explains the rest
            saved = state["settings"].get(key, _SETTINGS_ADDED.get(key))
            if saved != value:
                raise ValueError(f"TempBalance.load_state_dict: saved with {key}={saved!r}, this object has "
                                 f"{key}={value!r}")
        try:  # each component checks its own part
            selection.check_fingerprint(self._fingerprint, state["fingerprint"])
            self._groups.check_state(state["groups"])
            self.cadence.check_state(state["cadence"])
            self._passes.check_state(state["passes"])
        except ValueError as e:
            raise ValueError(f"TempBalance.load_state_dict: {e}") from None
        if (state["base_scheduler"] is None) != (self._base_scheduler is None):
            raise ValueError("TempBalance.load_state_dict: saved "
                             f"{'without' if state['base_scheduler'] is None else 'with'} a base_scheduler, this "
                             f"object has {'none' if self._base_scheduler is None else 'one'}")
        factors = state["results"]["factors"]
        if not isinstance(factors, dict) or set(factors) != set(self.units) or not all(
                isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in factors.values()):
            raise ValueError(f"TempBalance.load_state_dict: the saved factors do not cover this object's "
                             f"{len(self.units)} units with finite positive numbers")
        held = state["progress"].get("held_base")
        if self._held is not None and (not isinstance(held, list) or len(held) != len(self._groups.units) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in held)):
            raise ValueError(f"TempBalance.load_state_dict: the saved base rates held between passes do not cover "
                             f"this object's {len(self._groups.units)} param groups")

    def _settings(self) -> dict[str, Any]:
        """What a checkpoint must have been saved with (checked on load)."""
        return dict(unit=self.unit, metric=self.metric, target=self.target, lag=self.lag, stagger=self.stagger,
                    compat=self.compat, normalize=self.normalize)

    def __repr__(self) -> str:
        return (f"TempBalance(adapter={getattr(self.adapter, 'name', type(self.adapter).__name__)}, unit={self.unit}, "
                f"units={len(self.units)}, matrices={len(self._specs)}, metric={self.metric}, target={self.target}, "
                f"interval={self.interval}, step={self.step_count})")


# TempBalance(...) takes _setup's arguments plus preset= and the preset's choice keyword; show that signature
_ARGUMENTS = tuple(n for n in inspect.signature(TempBalance._setup).parameters
                   if n not in ("self", "model", "optimizer"))


def _public_signature() -> inspect.Signature:
    setup = inspect.signature(TempBalance._setup)
    params = list(setup.parameters.values())
    preset = inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
    choice = inspect.Parameter("preset_choice", inspect.Parameter.VAR_KEYWORD, annotation="Any")
    return setup.replace(parameters=params[:3] + [preset] + params[3:] + [choice])


TempBalance.__init__.__signature__ = _public_signature()  # type: ignore[attr-defined]
