"""Fused per-group LR rescaling on the GPU: a refresh that ends in the optimizer's lr tensors without the host.

With fused or capturable Adam/AdamW on CUDA, every param group's ``lr`` is a tensor on the device. When the weights
live there too, a refresh runs as one stream of GPU work: the spectral pass (:func:`tempbalance.analysis.start_pass`
enqueues it without waiting), TempBalance's factor per unit from the metrics table (the CUDA core's
``unit_factors`` kernel, ``tb::packed_unit_factors``: the same tb_math.h functions and order as the host commit),
and ``base x factor`` copied into every group's lr tensor. Nothing waits for the GPU in between, so the next
``optimizer.step()`` is enqueued right behind the pass. The Python floats (``tb.factors``, the report, history)
come from :meth:`DeviceRefresh.report`, which waits once, when they are first needed.

:class:`FusedRunner` is the scheduler's side of it: it starts such a refresh when the policy, the pass and the
groups allow (:meth:`FusedRunner.start`), holds it, and hands the finished pass back to be committed the usual way
when anything needs the host's numbers (:meth:`FusedRunner.take`); everything else here is independent of the
scheduler.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from .. import analysis
from ..analysis import cuda_backend
from ..analysis.options import AnalysisOptions
from ..analysis.report import Report
from ..analysis.specs import MatrixSpec


def tensor_lrs(groups: Sequence[dict]) -> list[torch.Tensor] | None:
    """Every group's ``lr`` when all are tensors on one device the CUDA core serves, else None."""
    lrs = [g.get("lr") for g in groups]
    if not lrs or not all(isinstance(lr, torch.Tensor) and lr.numel() == 1 for lr in lrs):
        return None
    device = lrs[0].device
    if not cuda_backend.is_device(lrs[0]) or any(lr.device != device for lr in lrs):
        return None
    return lrs


def write_lrs(lrs: Sequence[torch.Tensor], base: Sequence[float], factors: torch.Tensor,
              group_unit: Sequence[int]) -> None:
    """``lrs[i] <- base[i] * factors[group_unit[i]]`` on the device (``group_unit[i] < 0``: factor 1), without
    waiting: the product is formed in float64 and rounded once into each lr tensor's dtype, as ``fill_`` of the
    host's float product does."""
    device = factors.device
    n = int(factors.numel())
    extended = torch.cat([factors.to(torch.float64), torch.ones(1, dtype=torch.float64, device=device)])
    index = cuda_backend.host_to_device([u if 0 <= u < n else n for u in group_unit], torch.int64, device)
    values = cuda_backend.host_to_device([float(b) for b in base], torch.float64, device) * extended[index]
    for lr, v in zip(lrs, values.unbind()):
        lr.copy_(v)


class DeviceRefresh:
    """A refresh enqueued on the GPU. ``written``: its factors are already in the groups' lr tensors (else the
    caller commits :meth:`report` the usual way). :meth:`report` waits for the GPU once."""

    def __init__(self, spectral_pass: analysis.SpectralPass, written: bool, host_seconds: float,
                 events: tuple[Any, Any] | None):
        self.spectral_pass, self.written = spectral_pass, written
        self.host_seconds, self.events = host_seconds, events
        self._report: Report | None = None

    def report(self) -> Report:
        if self._report is None:
            report = self.spectral_pass.report()
            # The pass ran on the GPU while the host went on: its cost is the GPU's time between the two events.
            if self.events is not None:
                start, end = self.events
                end.synchronize()
                report.seconds = max(self.host_seconds, start.elapsed_time(end) / 1000.0)
            else:
                report.seconds = self.host_seconds
            self._report = report
        return self._report


def fused_refresh(specs: list[MatrixSpec], options: AnalysisOptions, *, groups: Sequence[dict],
                  base: Sequence[float], group_unit: Sequence[int], unit_index: Sequence[int], n_units: int,
                  metric: str, previous: Sequence[float], mapping: Any) -> DeviceRefresh:
    """Run a refresh's pass and, when it ran entirely on the device of the groups' lr tensors, write
    ``base x factor`` into them there (``written=True``); the factors never visit the host.

    ``unit_index[j]``: the unit of ``specs[j]`` (in ``range(n_units)``); ``group_unit[i]``: the unit of group i
    (-1: none, factor 1); ``previous``: the factor per unit now (units whose matrices failed keep it);
    ``mapping``: the units' mapping options (:class:`~tempbalance.training.mapping.MappingOptions`).
    """
    start = time.perf_counter()
    lrs = tensor_lrs(groups)
    events = None
    if lrs is not None and lrs[0].device.type == "cuda":
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        events[0].record(torch.cuda.current_stream(lrs[0].device))
    spectral_pass = analysis.start_pass(specs, options)
    table = spectral_pass.device_table() if lrs is not None else None
    written = False
    if table is not None and table.device == lrs[0].device:
        prev = cuda_backend.host_to_device([float(f) for f in previous], torch.float64, table.device)
        got = cuda_backend.unit_factors(table, unit_index, n_units, metric=metric, previous=prev, mapping=mapping)
        if got is not None:
            write_lrs(lrs, base, got[1], group_unit)
            written = True
    if events is not None:
        events[1].record(torch.cuda.current_stream(lrs[0].device))
    return DeviceRefresh(spectral_pass, written, time.perf_counter() - start, events if written else None)


class FusedRunner:
    """The refreshes of one TempBalance that run entirely on the GPU (module docstring): at most one is held,
    written into the lr tensors but not yet committed on the host."""

    def __init__(self) -> None:
        self.pending: tuple[DeviceRefresh, list[int], float] | None = None

    def start(self, specs: list[MatrixSpec], indices: list[int], options: AnalysisOptions, *, groups: Sequence[dict],
              base: Sequence[float], group_unit: Sequence[int], unit_index: Sequence[int], n_units: int,
              metric: str, previous: Sequence[float], mapping: Any, started: float) -> Report | None:
        """Run the pass over ``specs`` (the matrices ``indices``): None when its factors are already in the lr
        tensors (held until :meth:`take`), else its report for the host to commit. ``started``: the clock when the
        refresh began (the loop was blocked since)."""
        pending = fused_refresh(specs, options, groups=groups, base=base, group_unit=group_unit,
                                unit_index=unit_index, n_units=n_units, metric=metric, previous=previous,
                                mapping=mapping)
        if pending.written:
            self.pending = (pending, indices, time.perf_counter() - started)
            return None
        return pending.report()

    def take(self) -> tuple[Report, list[int], float] | None:
        """The held refresh's report (waits for the GPU once), its matrices and what it blocked the loop; None
        when none is held. It is no longer held then."""
        if self.pending is None:
            return None
        pending, indices, blocking = self.pending
        self.pending = None
        return pending.report(), indices, blocking

    def drop(self) -> None:
        """Forget the held refresh (a checkpoint loaded since supersedes it)."""
        self.pending = None
