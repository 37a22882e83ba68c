"""TempBalance under torch.distributed (DDP, FSDP2): the spectral work divided among the ranks.

Contract used by :class:`tempbalance.TempBalance` (scheduler.py):

- ``Coordinator.maybe(process_group) -> Coordinator | None``: ``None`` when torch.distributed is not initialised
  or the group has one rank (the single-process code path).
- ``Coordinator.analyze_specs(specs, options: AnalysisOptions) -> Report``: the full Report (rows in ``specs`` order),
  identical on every rank.
- ``Coordinator.check_identical(factors: dict[str, float], step: int) -> None``: raises on every rank if the
  ranks' factors differ.

One pass (every rank runs the same sequence of collectives):

1. Plan (first pass, then cached while the specs stay the same): every rank reads each matrix's layout (shape,
   kind, dtype, DTensor shard layout); the layouts are all-gathered and must agree; every rank derives the same
   :class:`~tempbalance.distributed.partition.Plan` (owners by cost, "local" / "gather" / "gram" transport, rounds).
2. Per round: sharded matrices reach their owners (shards gathered, or shard Grams reduced); then every rank
   analyses what it owns - its share of full copies in one batched :func:`tempbalance.analysis.analyze_specs`
   call, reduced Grams by an eigensolve and :func:`tempbalance.hill.hill_metrics`.
3. The rows (and any rank's failures) are all-gathered: every rank builds the same Report.

A rank that fails (an exception in its share, non-finite weights) still enters every collective; its rows come
back failed ("error" / "non_finite"), so every rank agrees which units keep their factors. Layouts it cannot
handle (2-d meshes, Partial, a mesh other than the group) raise :class:`LayoutError` on every rank.
See docs/DISTRIBUTED.md.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from .. import _backend, analysis
from ..analysis import hill, spectra, spectral_pass
from ..analysis.options import AnalysisOptions
from ..analysis.report import LayerResult, Report
from ..analysis.specs import MatrixSpec
from .partition import Layout, Plan, make_plan
from .transport import (LayoutError, comm_device, describe, gather_to_owner, local_gram, local_part,
                             reduce_gram_to_owner)

__all__ = ["Coordinator", "LayoutError"]

class Coordinator:
    """Divides TempBalance's spectral pass among the ranks of ``group`` (see the module docstring).

    Args:
        group: the process group whose ranks share the work (``None``: the default group).
        transport: ``"auto"`` (a sharded matrix is gathered on its owner or its shards' Grams are reduced there,
            whichever sends fewer bytes) or ``"gather"`` (always gather: results bit-identical to a
            single-process run; the Gram path agrees to round-off, alphas ~1e-6 apart in float32).

    Pass an instance as ``TempBalance(..., process_group=Coordinator(group, transport="gather"))`` to choose.
    ``last_stats`` describes the last pass on this rank: the plan summary, bytes this rank sent and received,
    matrices it analysed, and seconds per phase.
    """

    TRANSPORTS = ("auto", "gather")
    distributed = True  # the analyzer interface of tempbalance.training.passes (LocalAnalyzer: False)

    def __init__(self, group: Any = None, transport: str = "auto"):
        if transport not in self.TRANSPORTS:
            raise ValueError(f"transport must be one of {self.TRANSPORTS}, got {transport!r}")
        self.group, self.transport = group, transport
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.group_ranks = (list(range(self.world)) if group is None or group is dist.group.WORLD
                            else dist.get_process_group_ranks(group))
        self.device = comm_device(group)  # CPU for gloo; the current CUDA device for NCCL
        self._plan: Plan | None = None
        self._plan_key: tuple | None = None
        self.last_stats: dict[str, Any] = {}

    @classmethod
    def maybe(cls, process_group: Any = None) -> "Coordinator | None":
        """A Coordinator when torch.distributed is initialised and the group has several ranks, else ``None``;
        a Coordinator given as ``process_group`` is used as it is."""
        if isinstance(process_group, Coordinator):
            return process_group
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size(process_group) <= 1:
            return None
        return cls(process_group)

    # --- the pass -----------------------------------------------------------------------------------------------
    def analyze_specs(self, specs: list[MatrixSpec], options: AnalysisOptions | None = None, *,
                      skipped: list[tuple[str, str]] | None = None, **overrides: Any) -> Report:
        """Same contract and result as :func:`tempbalance.analysis.analyze_specs`, on every rank."""
        start = time.perf_counter()
        # checked identically on every rank (a ValueError everywhere, before any collective)
        options = AnalysisOptions.of(options, overrides)
        settings = analysis.analyze_specs([], options).settings
        plan = self._get_plan(specs, options)
        t_plan = time.perf_counter()
        rows: dict[int, LayerResult] = {}
        failures: dict[int, str] = {}
        sent = received = 0
        t_exchange = 0.0
        for round_ in plan.rounds:
            t0 = time.perf_counter()
            proxies, grams, moved = self._exchange(specs, plan, round_, failures)
            sent, received = sent + moved[0], received + moved[1]
            t_exchange += time.perf_counter() - t0
            rows.update(self._analyze_own(specs, plan, proxies, grams, options))
        t_analysed = time.perf_counter()
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, (rows, failures), group=self.group)
        report = self._assemble(specs, plan, gathered, settings, skipped)
        if any(f for _, f in gathered) or any(lay.error for lay in plan.layouts):
            self._plan = self._plan_key = None  # re-read the layouts next pass (they may have changed)
        end = time.perf_counter()
        report.seconds = end - start
        self.last_stats = dict(
            plan.summary(), rank=self.rank, bytes_sent=sent, bytes_received=received,
            analysed=sum(1 for s in plan.steps if s.owner == self.rank),
            seconds=dict(plan=t_plan - start, exchange=t_exchange, analyse=t_analysed - t_plan - t_exchange,
                         gather=end - t_analysed, total=end - start))
        return report

    def _get_plan(self, specs: list[MatrixSpec], options: AnalysisOptions) -> Plan:
        dtype, conv_mode = options.dtype, options.conv_mode
        budget = options.chunk_bytes or analysis.DEFAULT_CHUNK_BYTES
        key = (tuple((id(s), s.name) for s in specs), dtype, conv_mode, budget, self.transport)
        if self._plan is not None and self._plan_key == key:
            return self._plan
        layouts, unsupported = [], ""
        with torch.no_grad():
            for s in specs:  # same order on every rank: a DTensor weight() may itself communicate
                try:
                    w = s.weight()
                    layouts.append(describe(s.name, w, s.kind, self.group_ranks))
                except LayoutError as e:
                    unsupported = unsupported or str(e)
                    layouts.append(Layout((), s.kind, torch.float32, error=str(e)))
                except Exception as e:  # noqa: BLE001 - reported as this matrix's failure
                    layouts.append(Layout((), s.kind, torch.float32, error=f"{type(e).__name__}: {e}"))
                w = None
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, (layouts, unsupported, [s.name for s in specs]), group=self.group)
        for r, (_, bad, _) in enumerate(everyone):  # identical on every rank, so every rank raises alike
            if bad:
                raise LayoutError(f"rank {r}: {bad}")
        for r, (_, _, names) in enumerate(everyone):
            if names != everyone[0][2]:
                diff = next((a, b) for a, b in itertools.zip_longest(everyone[0][2], names) if a != b)
                raise RuntimeError(f"TempBalance: rank {r} analyses other matrices than rank 0 (first difference: "
                                   f"{diff[1]!r} vs {diff[0]!r}); every rank must build the same model and options")
        layouts = self._agree(specs, [t for t, _, _ in everyone])
        plan = make_plan(layouts, self.world, dtype=dtype, conv_mode=conv_mode, budget=budget,
                         allow_gram=self.transport == "auto")
        self._plan, self._plan_key = plan, key
        return plan

    def _agree(self, specs: list[MatrixSpec], per_rank: list[list[Layout]]) -> list[Layout]:
        """The layouts every rank uses (the ranks' matrix names already agree): equal on all ranks (else a clear
        error on every rank); a matrix whose ``weight()`` failed on any rank is marked failed for all."""
        out = []
        for k, s in enumerate(specs):
            views = [x[k] for x in per_rank]
            errors = [f"rank {r}: {v.error}" for r, v in enumerate(views) if v.error]
            if errors:
                out.append(Layout((), s.kind, torch.float32, error="; ".join(errors)))
                continue
            if any(v != views[0] for v in views[1:]):
                differ = [r for r, v in enumerate(views) if v != views[0]]
                raise RuntimeError(
                    f"TempBalance: layer '{s.name}' differs between ranks (rank 0: {views[0]}, rank {differ[0]}: "
                    f"{views[differ[0]]}); every rank must build the same model and options")
            out.append(views[0])
        return out

    def _exchange(self, specs: list[MatrixSpec], plan: Plan, round_: list[int], failures: dict[int, str]):
        """This round's collectives (started in spec order, then awaited, so transfers overlap the next shard's
        preparation). Returns what this rank owns: proxies (index -> spec of a full tensor) for the batched
        analysis, reduced Gram buffers (index -> tensor), and (bytes sent, bytes received)."""
        proxies: dict[int, MatrixSpec] = {}
        grams: dict[int, torch.Tensor] = {}
        pending: list[tuple[int, Callable[[], Any]]] = []
        sent = received = 0
        with torch.no_grad():
            for k in round_:
                spec, lay, step = specs[k], plan.layouts[k], plan.steps[k]
                mine = step.owner == self.rank
                if step.method == "failed" or (not lay.distributed and not mine):
                    continue
                if not lay.distributed:  # a full copy here: the owner's batched analysis reads it itself
                    proxies[k] = spec
                    continue
                local = None
                try:
                    local = local_part(spec.name, spec.weight(), lay, self.rank, self.world)
                except Exception as e:  # noqa: BLE001 - still enter the collective; reported after the pass
                    failures[k] = f"{type(e).__name__}: {e}"
                if step.method == "local":  # a replicated DTensor
                    if mine and local is not None:
                        proxies[k] = MatrixSpec(spec.name, spec.kind, lambda t=local: t, spec.unit, [])
                    continue
                if step.method == "gather":
                    finish = gather_to_owner(local, lay, step.owner, self.rank, self.world, self.group, self.device)
                else:  # gram
                    gram_dtype = spectra.analysis_dtype(lay.dtype, plan.dtype)
                    finish = reduce_gram_to_owner(local_gram(local, lay, gram_dtype, self.device), step.owner,
                                                  self.group)
                pending.append((k, finish))
                received += step.recv_bytes if mine else 0
                sent += 0 if mine else step.nbytes // (self.world - 1)
                local = None
            for k, finish in pending:
                result = finish()
                if plan.steps[k].owner != self.rank:
                    continue
                if plan.steps[k].method == "gram":
                    grams[k] = result
                else:
                    spec = specs[k]
                    proxies[k] = MatrixSpec(spec.name, spec.kind, lambda t=result: t, spec.unit, [])
        return proxies, grams, (sent, received)

    def _analyze_own(self, specs: list[MatrixSpec], plan: Plan, proxies: dict[int, MatrixSpec],
                     grams: dict[int, torch.Tensor], options: AnalysisOptions) -> dict[int, LayerResult]:
        """Rows of the matrices this rank owns in this round; an exception becomes "error" rows, never escapes."""
        rows: dict[int, LayerResult] = {}
        if proxies:
            idx = sorted(proxies)
            try:
                report = analysis.analyze_specs([proxies[k] for k in idx], options)
                rows.update(zip(idx, report.rows))
            except Exception as e:  # noqa: BLE001
                rows.update({k: _error(specs[k], plan.layouts[k], f"{type(e).__name__}: {e}") for k in idx})
        if grams:
            try:
                rows.update(self._gram_rows(specs, plan, grams, options))
            except Exception as e:  # noqa: BLE001
                rows.update({k: _error(specs[k], plan.layouts[k], f"{type(e).__name__}: {e}") for k in grams})
        return rows

    def _gram_rows(self, specs: list[MatrixSpec], plan: Plan, grams: dict[int, torch.Tensor],
                   opt: AnalysisOptions) -> dict[int, LayerResult]:
        """Rows from reduced Grams: eigenvalues of each Gram (ascending, round-off negatives clamped to 0, as the
        core), then the Hill metrics in one call."""
        rows: dict[int, LayerResult] = {}
        eigs, done, rtol = [], [], []
        for k, buf in sorted(grams.items()):
            spec, lay = specs[k], plan.layouts[k]
            dtype = spectra.analysis_dtype(lay.dtype, opt.dtype)
            n_nan, n_inf, n_over = (int(x) for x in buf[-3:].tolist()) if torch.isfinite(buf[-3:]).all() else (-1,) * 3
            side = int(math.isqrt(buf.numel() - 3))
            gram = buf[:-3].reshape(side, side)
            if n_nan < 0:
                reason = f"layer '{spec.name}': a rank's share could not be read"
            elif n_nan or n_inf:
                reason = (f"layer '{spec.name}': weight has {n_nan} NaN and {n_inf} Inf of "
                          f"{math.prod(lay.shape)} entries")
            elif n_over or not bool(torch.isfinite(gram).all()):
                reason = f"layer '{spec.name}': weight overflows {dtype} in its Gram; use float64"
            else:
                eigs.append(torch.linalg.eigvalsh(gram).clamp_min_(0.0).to(torch.float64).cpu().numpy())
                done.append(k)
                rtol.append(hill.default_zero_rtol(side, dtype) if opt.zero_rtol is None else opt.zero_rtol)
                continue
            rows[k] = spectral_pass._failed(spec, lay.shape, "non_finite", reason)
        if not done:
            return rows
        metrics = hill.hill_metrics(eigs, opt.hill_only(), zero_rtol=rtol, backend=_backend.name(opt.backend),
                                    assume_sorted=True)
        for k, m in zip(done, metrics):
            rows[k] = spectral_pass.metrics_row(specs[k], plan.layouts[k].shape, m)
        return rows

    def _assemble(self, specs: list[MatrixSpec], plan: Plan, gathered: list[Any], settings: dict,
                  skipped: list[tuple[str, str]] | None) -> Report:
        rows: dict[int, LayerResult] = {}
        for part, _ in gathered:
            rows.update(part)
        for k, lay in enumerate(plan.layouts):
            if lay.error:
                rows[k] = _error(specs[k], lay, lay.error)
        for r, (_, failed) in enumerate(gathered):
            for k, msg in failed.items():
                rows[k] = _error(specs[k], plan.layouts[k], f"rank {r}: {msg}")
        missing = [specs[k].name for k in range(len(specs)) if k not in rows]
        if missing:
            raise RuntimeError(f"TempBalance: no rank analysed {missing[:5]}")
        return Report([rows[k] for k in range(len(specs))], settings=settings,
                      skipped=list(skipped or []))

    # --- agreement ----------------------------------------------------------------------------------------------
    def check_identical(self, factors: dict[str, float], step: int) -> None:
        """Raise ``RuntimeError`` on every rank, naming the ranks and units, if the ranks' factors differ."""
        mine = sorted((str(u), float(f)) for u, f in factors.items())
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, mine, group=self.group)
        differ = [r for r, f in enumerate(everyone) if f != everyone[0]]
        if differ:
            r = differ[0]
            a, b = dict(everyone[0]), dict(everyone[r])
            units = sorted(u for u in set(a) | set(b) if a.get(u) != b.get(u))
            detail = ", ".join(f"{u}: {a.get(u)} vs {b.get(u)}" for u in units[:4])
            raise RuntimeError(
                f"TempBalance (step {step}): ranks {differ} set different factors than rank 0 for "
                f"{len(units)} unit(s) ({detail}); the ranks' models or options differ")


def _error(spec: MatrixSpec, layout: Layout, message: str) -> LayerResult:
    return spectral_pass._failed(spec, layout.shape, "error", f"layer '{spec.name}': {message}")
