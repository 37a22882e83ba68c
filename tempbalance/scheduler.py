"""TempBalance: per-unit learning-rate factors from the spectra of the weights, over any optimizer and schedule.

How the factors reach the optimizer without ever compounding (SPEC §3): every param group ``i`` has an
un-factored learning rate ``base[i]`` - what the user's schedule says - and a factor ``f[i]`` of its unit; the
group holds ``base[i] * f[i]`` while the optimizer steps. ``step()`` first writes ``base[i]`` back into the
groups, then advances the base scheduler (so chainable schedulers - StepLR, the recursive CosineAnnealingLR,
LinearLR, SequentialLR - read their own value, and LambdaLR-style ones that rewrite ``lr`` from ``base_lrs`` are
unaffected), records the new ``base[i]`` and writes ``base[i] * f[i]`` again. Factors are only ever multiplied onto
``base[i]``, never onto the previous group value.

Param groups: each existing group is split by unit when its parameters belong to several units (every
hyper-parameter of the source group copied; splits are placed right after it), never merged; a base scheduler
built on the unsplit optimizer has its per-group lists (``base_lrs``, ``lr_lambdas``, ``_last_lr``, ...) extended
to match. Groups get informational keys ``tb_unit`` and ``tb_factor``.

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

import copy
import math
import re
import time
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from . import analysis, device_lr, distributed, mapping as _mapping, streams
from .distributed import partition
from .adapters import MatrixSpec, get_adapter
from .cadence import Cadence, as_cadence
from .report import Report

METRICS = ("alpha", "spectral_norm", "stable_rank", "alpha_hat")
TARGETS = ("lr", "weight_decay")
# statuses that mean "the spectral pass failed for this layer" (keep the last factor), as opposed to "cannot be
# fitted" (too few eigenvalues, flat tail: untuned, factor 1)
_FAILED = ("non_finite", "error", "empty")
# scheduler attributes that hold one entry per param group (torch's schedulers; transformers' are LambdaLRs)
_PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs", "base_momentums", "max_momentums")
_STATE_VERSION = 2


@dataclass
class _PendingPass:
    """A background pass on the weights of ``started_step`` (over the matrices ``indices``), applied at
    ``due_step``."""

    started_step: int
    due_step: int
    future: Future
    snapshot_seconds: float
    indices: list[int]


def _raise(error: BaseException) -> torch.Tensor:
    raise error


def _snapshot(specs: list[MatrixSpec]) -> tuple[list[MatrixSpec], streams.Handoff]:
    """Copies of the analysed weights as they are now, for a pass that runs while training changes them, and the
    handoff that orders a background thread's use of CUDA copies after the copying (streams.Handoff). A layer
    whose weight cannot be read fails in the pass, with its error, like in a synchronous one."""
    out, copies = [], []
    with torch.no_grad():
        for s in specs:
            try:
                w = s.weight().detach().clone()
                copies.append(w)
                fn = (lambda w=w: w)
            except Exception as e:  # noqa: BLE001
                fn = (lambda e=e: _raise(e))
            out.append(MatrixSpec(s.name, s.kind, fn, s.unit))
    return out, streams.Handoff(copies)


def _report_state(report: Report) -> dict[str, Any]:
    return dict(rows=report.to_records(), seconds=report.seconds, settings=dict(report.settings))


def _report_from_state(state: dict[str, Any]) -> Report:
    return Report.from_records(state["rows"], seconds=float(state["seconds"]), settings=dict(state["settings"]))


def _patterns(arg: str, value: Any) -> list[re.Pattern]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for p in items:
        try:
            out.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise ValueError(f"{arg}: {p!r} is not a valid regular expression ({e})") from None
    return out


def _get(group: dict, key: str) -> float:
    v = group[key]
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _set(group: dict, key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)  # fused/capturable optimizers hold the tensor; keep it
    else:
        group[key] = value


def _copy_hparams(group: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in group.items()
            if k != "params"}


def _schedulers(sched: Any) -> list[Any]:
    """``sched`` and, recursively, the schedulers it chains (SequentialLR, ChainedScheduler)."""
    out = [sched]
    for s in getattr(sched, "_schedulers", []) or []:
        out.extend(_schedulers(s))
    return out


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
    """A global optimizer step pre-hook that runs ``tb``'s due refresh before its optimizer steps. It holds ``tb``
    weakly, so an abandoned TempBalance is still collected (and its hook removed)."""
    ref = weakref.ref(tb)

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        me = ref()  # compare the groups now: optimizer.load_state_dict replaces the list
        if me is not None and me._refresh_due and optimizer.param_groups is me.optimizer.param_groups:
            me._run_due()

    return register_optimizer_step_pre_hook(before_step)


class TempBalance:
    """Layer-wise (block-wise) learning rates from PL_Alpha_Hill, multiplied onto any base schedule.

    Args:
        model: the model being trained.
        optimizer: any torch optimizer (or wrapper exposing ``param_groups``) over the model's parameters.
        base_scheduler: the user's LR scheduler, built on ``optimizer`` before this object; ``step()`` advances
            it. Without one the groups' current ``lr`` is the (constant) base.
        unit: ``"block"`` (mean alpha of a block's matrices drives every parameter of the block) or ``"layer"``
            (each matrix drives its own layer); ``None`` = the adapter's choice.
        mapping: ``"sigmoid"`` (TBSigmoid: ``tau``, ``s_lo``, ``s_hi``) or ``"linear"`` (TBLinearMap: ``s1``, ``s2``).
        xmin_pos, xmin_rule, min_eigs, dtype, backend: analysis options (:func:`tempbalance.analyze`);
            ``min_eigs=None`` = the adapter's default.
        interval: when to re-analyse (always also once at construction): an integer = every ``interval`` calls
            of :meth:`step`; ``None`` or ``"epoch"`` = at each :meth:`epoch_end`; ``"adaptive"`` or a
            :class:`~tempbalance.cadence.Adaptive` = often while the alphas move, rarely once they settle;
            :class:`~tempbalance.cadence.Budget` = as often as keeps the spectral work under a share of the
            training time; any :class:`~tempbalance.cadence.Cadence`. A refresh due at :meth:`epoch_end` runs
            right before the next ``optimizer.step()`` (the weights cannot change before it, so the factors are
            those of an immediate pass), so the pass after a loop's last epoch costs nothing unless its results
            are read (``alphas``, ``factors``, ``history``, ``get_last_lr()``, ...), which runs it then; reading
            ``optimizer.param_groups`` directly between ``epoch_end()`` and the next step shows the previous
            factors. Optimizers that do not step through ``torch.optim.Optimizer`` get the pass at once.
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
        remove_first, remove_last: leave the first / last unit untuned (factor 1), as the reference code can.
        metric: what drives the mapping: ``"alpha"`` or the ablations ``"spectral_norm"``, ``"stable_rank"``,
            ``"alpha_hat"``.
        target: ``"lr"`` or ``"weight_decay"`` (the factors scale each group's weight decay instead).
        compat: reproduce the reference code (LoRA without scaling, conv eigenvalues x 0.5, linear map with all
            alphas equal -> s2).
        adapter: ``"auto"``, a registered adapter name or an :class:`~tempbalance.adapters.Adapter`.
        include_embeddings: analyse and tune embedding matrices too.
        process_group: under ``torch.distributed`` (DDP, FSDP2), the group whose ranks share the spectral work
            (each rank analyses its share of the matrices, the results are all-gathered and every rank checks it
            sets the same factors); ``None`` = the default group when torch.distributed is initialised, else a
            single-process run.

    Failures of a spectral pass (non-finite weights, a layer that cannot be analysed any more) leave the
    affected units at their last factor with one warning naming them; all new factors are computed before any
    group is touched, so the optimizer is never half-updated.
    """

    def __init__(
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
        xmin_pos: float = 2.0,
        xmin_rule: str = "median",
        interval: int | str | Cadence | None = None,
        lag: int = 0,
        stagger: int = 1,
        num_threads: int | None = None,
        chunk_bytes: int | None = None,
        min_eigs: int | None = None,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        remove_first: bool = False,
        remove_last: bool = False,
        metric: str = "alpha",
        target: str = "lr",
        compat: bool = False,
        adapter: Any = "auto",
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        include_embeddings: bool = False,
        process_group: Any = None,
    ):
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
        for arg, v in (("remove_first", remove_first), ("remove_last", remove_last), ("compat", compat)):
            if not isinstance(v, bool):
                raise ValueError(f"{arg} must be True or False, got {v!r}")
        self.model, self.optimizer, self.base_scheduler = model, optimizer, base_scheduler
        self.adapter = get_adapter(model, adapter)
        if compat and hasattr(self.adapter, "lora_scaling"):
            self.adapter.lora_scaling = False
        self.unit = unit if unit is not None else getattr(self.adapter, "default_unit", "block")
        if self.unit not in ("block", "layer"):
            raise ValueError(f"unit must be 'block', 'layer' or None (the adapter's choice), got {unit!r}")
        self.interval, self.cadence, self.lag, self.metric, self.target = interval, cadence, lag, metric, target
        self.map_options = dict(mapping=mapping, tau=_number("tau", tau, 0, strict=True), s_lo=_number("s_lo", s_lo, 0),
                                s_hi=_number("s_hi", s_hi, 0), s1=_number("s1", s1), s2=_number("s2", s2),
                                compat=compat, backend=backend)
        _mapping.lr_factors([1.0], **self.map_options)  # validates mapping/backend now, not at the first refresh
        self.analysis_options = dict(
            xmin_pos=xmin_pos, xmin_rule=xmin_rule, dtype=dtype, backend=backend,
            min_eigs=getattr(self.adapter, "min_eigs", analysis.DEFAULT_MIN_EIGS) if min_eigs is None else min_eigs,
            conv_scale=0.5 if compat else 1.0, num_threads=num_threads,
            chunk_bytes=chunk_bytes,
        )
        self._check_base_scheduler()
        self._check_optimizer()
        self._dist = distributed.Coordinator.maybe(process_group)
        if self._dist is not None and lag:
            raise ValueError("lag >= 1 (background passes) is not supported under torch.distributed yet; use lag=0")
        if self._dist is not None and stagger > 1:
            raise ValueError("stagger >= 2 is not supported under torch.distributed yet (the ranks already share "
                             "each pass); use stagger=1")

        self._specs, self.units = self._select_specs(include, exclude, remove_first, remove_last, include_embeddings)
        self._fingerprint = [[s.name, list(s.weight().shape)] for s in self._specs]
        self.stagger = stagger
        self._slices = self._stagger_slices(stagger)
        self._next_slice = 0
        unit_params = self.adapter.unit_params(model, self._specs, self.unit)
        self._split_groups({u: unit_params.get(u, []) for u in self.units})

        groups = self.optimizer.param_groups
        self._base = [_get(g, "lr") for g in groups]
        self._base_wd = [_get(g, "weight_decay") if target == "weight_decay" else 0.0 for g in groups]
        self._written = list(self._base)
        self._factors: dict[str, float] = {u: 1.0 for u in self.units}
        self._unit_values: dict[str, float] = {u: math.nan for u in self.units}
        self._alphas: dict[str, float] = {}
        self._alpha_std = math.nan
        self.step_count = 0
        self.epoch = 0
        self._spectral_seconds = 0.0
        self._blocking_seconds = 0.0
        self._history: list[dict[str, Any]] = []
        self.skipped_refreshes: list[int] = []
        self._last_report: Report | None = None
        self._refresh_due = False
        self._step_hook = _register_step_hook(self) if _steps_through_torch(optimizer) else None
        self._warned_external = False
        self._pending: _PendingPass | None = None
        self._deferred: tuple[device_lr.DeviceRefresh, list[int], float] | None = None  # see _settle
        self._executor: ThreadPoolExecutor | None = None
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._last_commit = (0, time.perf_counter())  # (step, clock) of the last applied refresh, for Budget
        self.refresh()

    # --- setup ------------------------------------------------------------------------------------------------
    def _check_base_scheduler(self) -> None:
        s = self.base_scheduler
        if s is None:
            if any("initial_lr" in g for g in self.optimizer.param_groups):
                warnings.warn(
                    "TempBalance: the optimizer's groups have 'initial_lr', so an LR scheduler seems attached; pass "
                    "it as base_scheduler= so TempBalance steps it (a scheduler stepped outside TempBalance "
                    "overwrites or compounds the factors)", UserWarning, stacklevel=3)
            return
        if not callable(getattr(s, "step", None)):
            raise TypeError(f"base_scheduler must have a step() method, got {type(s).__name__}")
        for sub in _schedulers(s):
            opt = getattr(sub, "optimizer", None)
            if opt is not None and opt is not self.optimizer and opt.param_groups is not self.optimizer.param_groups:
                raise ValueError(f"base_scheduler ({type(sub).__name__}) was built on a different optimizer than the "
                                 "one given to TempBalance")

    def _check_optimizer(self) -> None:
        for i, g in enumerate(self.optimizer.param_groups):
            if self.target == "lr" and "lr" not in g:
                raise ValueError(f"optimizer param group {i} has no 'lr'")
            if self.target == "lr" and g.get("relative_step", False):
                raise ValueError(
                    f"optimizer param group {i}: Adafactor with relative_step=True computes its own learning rate "
                    "and ignores 'lr'; use relative_step=False with a fixed lr, or target='weight_decay'")
            if self.target == "weight_decay" and "weight_decay" not in g:
                raise ValueError(f"target='weight_decay' but optimizer param group {i} has no 'weight_decay'")

    def _select_specs(self, include, exclude, remove_first, remove_last, include_embeddings):
        inc, exc = _patterns("include", include), _patterns("exclude", exclude)
        tuned = getattr(self.adapter, "tuned", None)  # block adapters report heads/poolers but do not tune them
        specs = [s for s in self.adapter.enumerate(self.model, include_embeddings=include_embeddings)
                 if (tuned is None or tuned(s))
                 and (not inc or any(p.search(s.name) for p in inc)) and not any(p.search(s.name) for p in exc)]
        units: list[str] = []
        for s in specs:
            if self._key(s) not in units:
                units.append(self._key(s))
        drop = set(units[:1] if remove_first else []) | set(units[-1:] if remove_last else [])
        specs = [s for s in specs if self._key(s) not in drop]
        units = [u for u in units if u not in drop]
        if not specs:
            warnings.warn("TempBalance: no matrix to analyse (check include/exclude and the adapter); every group "
                          "keeps factor 1", UserWarning, stacklevel=3)
        return specs, units

    def _key(self, spec: MatrixSpec) -> str:
        return spec.name if self.unit == "layer" else spec.unit

    def _split_groups(self, unit_params: dict[str, list[nn.Parameter]]) -> None:
        owner: dict[int, str] = {}
        for u, ps in unit_params.items():
            for p in ps:
                owner.setdefault(id(p), u)
        groups = self.optimizer.param_groups
        n_old = len(groups)
        new_groups, src = [], []
        for gi, g in enumerate(groups):
            buckets: dict[str | None, list] = {}
            for p in g["params"]:
                buckets.setdefault(owner.get(id(p)), []).append(p)
            if len(buckets) <= 1:
                g["tb_unit"] = next(iter(buckets), None)
                new_groups.append(g)
                src.append(gi)
                continue
            for k, (u, ps) in enumerate(buckets.items()):
                ng = g if k == 0 else _copy_hparams(g)
                ng["params"], ng["tb_unit"] = ps, u
                new_groups.append(ng)
                src.append(gi)
        lr_tensors: set[int] = set()
        for g in new_groups:  # each group needs its own lr tensor: factors differ, and lr is written in place
            lr = g.get("lr")
            if isinstance(lr, torch.Tensor):
                if id(lr) in lr_tensors:
                    g["lr"] = lr.clone()
                lr_tensors.add(id(g["lr"]))
        self._group_units = [g["tb_unit"] for g in new_groups]
        if len(new_groups) != len(groups):
            groups[:] = new_groups  # in place: wrappers (SAM) share this list
            if self.base_scheduler is not None:
                self._remap_scheduler(src, len(src), n_old)

    def _remap_scheduler(self, src: list[int], n_new: int, n_old: int) -> None:
        for s in _schedulers(self.base_scheduler):
            for attr in _PER_GROUP:
                lst = getattr(s, attr, None)
                if isinstance(lst, list) and len(lst) == n_old:
                    setattr(s, attr, [lst[i] for i in src])
            lst = getattr(s, "base_lrs", None)
            if isinstance(lst, list) and len(lst) != n_new:
                raise ValueError(f"base_scheduler {type(s).__name__}: has {len(lst)} base_lrs for {n_new} param groups "
                                 "after TempBalance split the groups by unit; build it on the same optimizer")

    # --- the loop -----------------------------------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> None:
        """Call once after each ``optimizer.step()``: advances the base scheduler (``args`` are passed to it,
        e.g. the metric of ReduceLROnPlateau), re-analyses every ``interval`` calls, applies base lr x factor."""
        self._run_due()
        groups = self.optimizer.param_groups
        self._sync_groups(groups)
        if self.base_scheduler is not None:
            if self.target == "lr":
                for g, b in zip(groups, self._base):
                    _set(g, "lr", b)  # the base scheduler reads and writes its own, un-factored value
            try:
                self.base_scheduler.step(*args, **kwargs)
            except BaseException:
                self._apply()  # the groups never stay un-factored
                raise
            if self.target == "lr":
                self._base = [_get(g, "lr") for g in groups]
        self.step_count += 1
        self._collect_due()
        if self.cadence.due_after_step(self.step_count):
            self._start_refresh()
        self._apply()

    def epoch_end(self) -> None:
        """Call at the end of every epoch: counts it, and with a per-epoch cadence (``interval=None``) re-analyses
        before the next optimizer step (``lag=0``) or starts the background pass then."""
        self._settle()
        self.epoch += 1
        if self.cadence.due_at_epoch_end(self.epoch):
            self._mark_due()

    def _mark_due(self) -> None:
        """A refresh is due: run it when the next optimizer step starts (the step hook), or now without one."""
        self._refresh_due = True
        if self._step_hook is None:
            self._run_due()

    def _run_due(self) -> None:
        """Commit a refresh that ran on the GPU (_settle), then run the refresh that fell due (synchronously or
        as a background pass) and apply the factors."""
        self._settle()
        if self._refresh_due:
            self._refresh_due = False
            self._start_refresh()
            self._apply()

    def _sync_groups(self, groups: list[dict]) -> None:
        """A group lr that changed since TempBalance wrote it was set outside (a scheduler not passed as
        base_scheduler, manual warmup): take it as the new base, and say so once."""
        if self.target != "lr":
            return
        if len(groups) != len(self._base):
            raise RuntimeError(f"the optimizer has {len(groups)} param groups, TempBalance manages "
                               f"{len(self._base)}: groups were added or removed after TempBalance was built")
        changed = [i for i, g in enumerate(groups) if _get(g, "lr") != self._written[i]]
        for i in changed:
            self._base[i] = self._written[i] = _get(groups[i], "lr")
        if changed and not self._warned_external:
            self._warned_external = True
            warnings.warn(
                f"TempBalance: the lr of param group(s) {changed[:8]} was changed outside TempBalance; taking it as "
                "the new base lr. Pass your scheduler as base_scheduler= so TempBalance steps it.",
                UserWarning, stacklevel=3)

    def _apply(self) -> None:
        for i, g in enumerate(self.optimizer.param_groups):
            u = self._group_units[i]
            f = self._factors.get(u, 1.0) if u is not None else 1.0
            if self._deferred is not None and isinstance(g["lr"], torch.Tensor):
                continue  # the GPU pass writes base x its factor there; _settle brings the floats up to date
            if self.target == "lr":
                _set(g, "lr", self._base[i] * f)
                self._written[i] = _get(g, "lr")  # as stored (a float32 tensor lr rounds)
            else:
                _set(g, "weight_decay", self._base_wd[i] * f)
            g["tb_factor"] = f

    # --- analysis ---------------------------------------------------------------------------------------------
    def refresh(self) -> Report:
        """Analyse the weights now, synchronously, and apply the new factors (exceptions propagate; groups are
        untouched then). A pending background pass is dropped: this one is newer."""
        self._refresh_due = False
        self._settle()
        self._drop_pending()
        report = self._refresh_now()
        self._apply()
        return report

    def _refresh_now(self, indices: list[int] | None = None, fused: bool = False) -> Report | None:
        """Analyse the live weights (the matrices ``indices``, default all) and commit the factors; the loop
        waits for all of it - except with ``fused`` on CUDA weights and tensor lrs, where the pass writes the
        factors into the lr tensors on the GPU and the commit waits until _settle (returns None then)."""
        indices = list(range(len(self._specs))) if indices is None else indices
        start = time.perf_counter()
        specs = [self._specs[i] for i in indices]
        if (fused and self.target == "lr" and self._dist is None and len(indices) == len(self._specs)
                and device_lr.tensor_lrs(self.optimizer.param_groups) is not None):
            index = {u: k for k, u in enumerate(self.units)}
            pending = device_lr.fused_refresh(
                specs, self.analysis_options, groups=self.optimizer.param_groups, base=self._base,
                group_unit=[index.get(u, -1) for u in self._group_units],
                unit_index=[index[self._key(s)] for s in specs], n_units=len(self.units), metric=self.metric,
                previous=[self._factors.get(u, 1.0) for u in self.units], map_options=self.map_options)
            if pending.written:
                self._deferred = (pending, indices, time.perf_counter() - start)
                return None
            report = pending.report()
        else:
            report = self._analyze(specs)
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
        self._apply()

    def _stagger_slices(self, k: int) -> list[list[int]]:
        """The matrices split into ``k`` slices of about equal spectral cost (largest first onto the cheapest
        slice, as ranks share a distributed pass), each in model order."""
        if k == 1:
            return [list(range(len(self._specs)))]
        costs = [partition.cost(tuple(shape), s.kind) for s, (_, shape) in zip(self._specs, self._fingerprint)]
        owners, _ = partition.assign(costs, k)
        return [[i for i, o in enumerate(owners) if o == j] for j in range(k)]

    def _take_slice(self) -> list[int]:
        """The matrices the next scheduled refresh analyses (all of them without staggering)."""
        indices = self._slices[self._next_slice % len(self._slices)]
        self._next_slice += 1
        return indices

    def add_refresh_callback(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(record)`` after every applied refresh with its ``history`` record (step, epoch, seconds,
        blocking_seconds, started_step, unit_values, factors, alpha_std, failed, alphas, analysed: how many
        matrices this pass analysed, stale_drift: the largest alpha change among them since their previous
        analysis). For loggers; an exception in ``fn`` is turned into a warning so training goes on."""
        if not callable(fn):
            raise TypeError(f"refresh callback must be callable, got {type(fn).__name__}")
        self._callbacks.append(fn)

    def _analyze(self, specs: list[MatrixSpec]) -> Report:
        if self._dist is not None:
            return self._dist.analyze_specs(specs, **self.analysis_options)
        return analysis.analyze_specs(specs, **self.analysis_options)

    def _start_refresh(self) -> None:
        """A refresh is due: synchronous with ``lag=0``, else snapshot + background pass due ``lag`` steps on."""
        if not self.lag:
            try:
                self._refresh_now(self._take_slice(), fused=True)
            except Exception as e:  # noqa: BLE001 - a failed pass must not stop training; factors are kept
                self._warn_failed(e)
            return
        if self._pending is not None:
            self.skipped_refreshes.append(self.step_count)  # deterministic: depends on step counts only
            return
        start = time.perf_counter()
        indices = self._take_slice()
        try:
            snapshot, handoff = _snapshot([self._specs[i] for i in indices])
        except Exception as e:  # noqa: BLE001
            self._warn_failed(e)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempbalance")
        future = self._executor.submit(handoff.run, self._analyze, snapshot)
        self._pending = _PendingPass(self.step_count, self.step_count + self.lag, future,
                                     time.perf_counter() - start, indices)

    def _collect_due(self) -> None:
        """Apply the background pass due at this step, waiting for it if it has not finished."""
        p = self._pending
        if p is None or self.step_count < p.due_step:
            return
        start = time.perf_counter()
        self._pending = None
        try:
            report = p.future.result()
            self._commit(report, p.indices, started_step=p.started_step,
                         blocking=p.snapshot_seconds + time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001
            self._warn_failed(e)

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.future.cancel()
            self._pending = None

    def wait(self) -> None:
        """Start a due refresh, then block until a pending background pass has finished (it is still applied at
        its due step)."""
        self._run_due()
        if self._pending is not None:
            wait([self._pending.future])

    def close(self) -> None:
        """Drop a due or pending pass, stop the background thread and remove the optimizer step hook (also done
        when the object is collected)."""
        self._settle()
        self._refresh_due = False
        self._drop_pending()
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __del__(self) -> None:
        hook = getattr(self, "_step_hook", None)
        if hook is not None:
            hook.remove()
        ex = getattr(self, "_executor", None)
        if ex is not None:
            ex.shutdown(wait=False)

    def _warn_failed(self, e: BaseException) -> None:
        warnings.warn(f"TempBalance: spectral pass at step {self.step_count} failed ({type(e).__name__}: {e}); "
                      "every unit keeps its factor", RuntimeWarning, stacklevel=4)

    def _commit(self, report: Report, indices: list[int], *, started_step: int, blocking: float) -> Report:
        """Map a finished pass over the matrices ``indices`` to factors and commit them (all computed before
        anything changes); the other matrices keep the rows of their last analysis. Returns the full report."""
        if [r.name for r in report.rows] != [self._specs[i].name for i in indices]:
            raise RuntimeError("analysis returned rows that do not match the analysed matrices")
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
        index = {u: k for k, u in enumerate(self.units)}
        unit_idx = np.array([index[self._key(s)] for s in self._specs], dtype=np.int64)
        vals = np.array([getattr(r, self.metric) if r.ok else math.nan for r in rows], dtype=np.float64)
        vals[~np.isfinite(vals)] = math.nan
        means = _mapping.unit_means(vals, unit_idx, len(self.units), backend=self.map_options["backend"])
        failed: dict[str, list[str]] = {}  # units that keep their factor: a matrix of theirs failed
        newly_failed: set[str] = set()  # ... in this pass (a stale failure was warned about when it happened)
        for i, (s, r) in enumerate(zip(self._specs, rows)):
            if r.status in _FAILED:
                failed.setdefault(self._key(s), []).append(r.reason or f"layer '{r.name}': {r.status}")
                if i in fresh:
                    newly_failed.add(self._key(s))
        for u in failed:
            means[index[u]] = math.nan
        factors = _mapping.lr_factors(means, **self.map_options)
        new = {u: (self._factors.get(u, 1.0) if u in failed else float(factors[k])) for k, u in enumerate(self.units)}
        if not all(math.isfinite(f) and f > 0 for f in new.values()):
            raise RuntimeError(f"non-finite or non-positive factors {new}")
        if self._dist is not None:
            self._dist.check_identical(new, step=self.step_count)
        # all computed: commit
        previous = self._unit_values
        self._factors = new
        self._unit_values = {u: (self._unit_values.get(u, math.nan) if u in failed else float(means[k]))
                             for k, u in enumerate(self.units)}
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
            warnings.warn(f"TempBalance: spectral pass at step {self.step_count} failed for unit(s) "
                          f"{sorted(newly_failed)} ({reasons}); they keep their previous factor", RuntimeWarning,
                          stacklevel=4)
        for fn in self._callbacks:
            try:
                fn(record)
            except Exception as e:  # noqa: BLE001 - a logger must not stop training
                warnings.warn(f"TempBalance: refresh callback {getattr(fn, '__name__', fn)!r} raised "
                              f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=4)
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
    def group_units(self) -> list[str | None]:
        """The unit of every param group (None: not tuned)."""
        return list(self._group_units)

    def get_last_lr(self) -> list[float]:
        """The learning rate of every param group as the optimizer uses it (base x factor)."""
        self._run_due()
        return [_get(g, "lr") for g in self.optimizer.param_groups]

    def get_base_lr(self) -> list[float]:
        """The un-factored learning rate of every group (what the base schedule says)."""
        return list(self._base) if self.target == "lr" else [_get(g, "lr") for g in self.optimizer.param_groups]

    # --- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, the base scheduler's state included (plain Python + tensors,
        loadable with ``torch.load(weights_only=True)``). A pending background pass is waited for and saved with
        its due step, so the resumed run applies it at the same step; a refresh that fell due and has not run is
        saved as due and runs before the resumed run's first optimizer step."""
        self._settle()
        return dict(
            version=_STATE_VERSION, step_count=self.step_count, epoch=self.epoch, unit=self.unit,
            metric=self.metric, target=self.target, base=list(self._base), base_wd=list(self._base_wd),
            written=list(self._written), factors=dict(self._factors), unit_values=dict(self._unit_values),
            alphas=dict(self._alphas), alpha_std=self._alpha_std, group_units=list(self._group_units),
            fingerprint=[list(x) for x in self._fingerprint], spectral_seconds=self._spectral_seconds,
            blocking_seconds=self._blocking_seconds, history=copy.deepcopy(self._history),
            cadence=self.cadence.state_dict(), lag=self.lag, pending=self._pending_state(),
            refresh_due=self._refresh_due, stagger=self.stagger, next_slice=self._next_slice,
            last_report=_report_state(self._last_report) if self.stagger > 1 and self._last_report else None,
            skipped_refreshes=list(self.skipped_refreshes),
            base_scheduler=self.base_scheduler.state_dict() if self.base_scheduler is not None else None,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a different model, unit mode or param-group layout is a ValueError
        saying what differs. The groups get base lr x factor as saved."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a TempBalance state_dict of version {_STATE_VERSION}")
        self._check_fingerprint(state["fingerprint"])
        for key, mine in (("unit", self.unit), ("metric", self.metric), ("target", self.target), ("lag", self.lag),
                          ("stagger", self.stagger)):
            if state.get(key, 1 if key == "stagger" else None) != mine:
                raise ValueError(f"TempBalance.load_state_dict: saved with {key}={state[key]!r}, this object has "
                                 f"{key}={mine!r}")
        if list(state["group_units"]) != self._group_units:
            raise ValueError(
                f"TempBalance.load_state_dict: the param groups differ (saved {len(state['group_units'])} groups "
                f"for units {state['group_units'][:6]}..., now {len(self._group_units)} for "
                f"{self._group_units[:6]}...); build the optimizer the same way")
        if (state["base_scheduler"] is None) != (self.base_scheduler is None):
            raise ValueError("TempBalance.load_state_dict: saved "
                             f"{'without' if state['base_scheduler'] is None else 'with'} a base_scheduler, this "
                             f"object has {'none' if self.base_scheduler is None else 'one'}")
        if self.base_scheduler is not None:
            self.base_scheduler.load_state_dict(state["base_scheduler"])
        self.step_count, self.epoch = int(state["step_count"]), int(state["epoch"])
        self._base, self._base_wd = [float(x) for x in state["base"]], [float(x) for x in state["base_wd"]]
        self._factors = {u: float(f) for u, f in state["factors"].items()}
        self._unit_values = dict(state["unit_values"])
        self._alphas, self._alpha_std = dict(state["alphas"]), float(state["alpha_std"])
        self._spectral_seconds = float(state["spectral_seconds"])
        self._blocking_seconds = float(state["blocking_seconds"])
        self._history = copy.deepcopy(list(state["history"]))
        self.cadence.load_state_dict(state["cadence"])
        self._last_commit = (self.step_count, time.perf_counter())
        self.skipped_refreshes = [int(x) for x in state["skipped_refreshes"]]
        self._drop_pending()
        self._deferred = None  # superseded: the groups get the loaded factors below
        self._refresh_due = bool(state.get("refresh_due", False))
        self._next_slice = int(state.get("next_slice", 0))
        if state.get("last_report") is not None:
            self._last_report = _report_from_state(state["last_report"])
        if state["pending"] is not None:
            p = state["pending"]
            future: Future = Future()
            future.set_result(_report_from_state(p["report"]))
            self._pending = _PendingPass(int(p["started_step"]), int(p["due_step"]), future, 0.0,
                                         [int(i) for i in p.get("indices", range(len(self._specs)))])
        self._apply()

    def _pending_state(self) -> dict[str, Any] | None:
        p = self._pending
        if p is None:
            return None
        try:
            report = p.future.result()
        except Exception as e:  # noqa: BLE001 - it fails the same way at its due step; nothing to resume
            self._pending = None
            self._warn_failed(e)
            return None
        return dict(started_step=p.started_step, due_step=p.due_step, report=_report_state(report),
                    indices=list(p.indices))

    def _check_fingerprint(self, saved: list) -> None:
        mine = {n: tuple(s) for n, s in self._fingerprint}
        theirs = {n: tuple(s) for n, s in saved}
        if mine == theirs and [n for n, _ in saved] == [n for n, _ in self._fingerprint]:
            return
        missing = [n for n in theirs if n not in mine]
        added = [n for n in mine if n not in theirs]
        reshaped = [f"'{n}' {theirs[n]} -> {mine[n]}" for n in theirs if n in mine and theirs[n] != mine[n]]
        parts = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}" for label, items in
                 (("layers missing now:", missing), ("new layers:", added), ("shapes changed:", reshaped)) if items]
        raise ValueError("TempBalance.load_state_dict: the model differs from the one saved - "
                         + ("; ".join(parts) or "the layers are in a different order"))

    def __repr__(self) -> str:
        return (f"TempBalance(adapter={getattr(self.adapter, 'name', type(self.adapter).__name__)}, unit={self.unit}, "
                f"units={len(self.units)}, matrices={len(self._specs)}, metric={self.metric}, target={self.target}, "
                f"interval={self.interval}, step={self.step_count})")
