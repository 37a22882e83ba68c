"""The refresh stage of TempBalance (select -> refresh -> apply): passes over the selected matrices, and what a
finished pass changes.

A :class:`Refresher` runs a pass - now, as a pass due some steps later (:class:`~tempbalance.training.passes.
PassRunner`: a background snapshot or a reference's timing, a stagger slice), or entirely on the GPU
(:class:`~tempbalance.training.fused_gpu.FusedRunner`) - through its analyzer (this process, or the ranks together),
and commits each finished pass: the policy maps it (:mod:`~tempbalance.training.commit`), the results take it, the
cadence hears what it found and cost, failures and callbacks are reported. TempBalance decides when; the groups
(:class:`~tempbalance.training.groups.FactoredGroups`) receive the factors.
"""
from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable

import numpy as np
from torch.utils.hooks import RemovableHandle

from .._warn import warn
from ..analysis.options import AnalysisOptions
from ..analysis.report import Report
from ..analysis.specs import MatrixSpec
from . import commit
from .cadence import Cadence
from .fused_gpu import FusedRunner, tensor_lrs
from .groupset import GroupSet
from .passes import PassRunner
from .policies import Policy
from .results import Results
from .selection import Selection


class Refresher:
    """The refreshes of one TempBalance over the matrices ``chosen`` selected.

    ``policies``: what a pass turns into factors, one knob each (the first is the primary one); ``analyzer``: who
    analyses a pass (``analyze_specs``, ``check_identical``, ``distributed``); ``options``: how; ``delay``: steps
    from a pass to its factors (``>= lag``). :attr:`analyze` is the one door every pass goes through.
    :attr:`groups` (the optimizers' groups, set once they exist) take the factors of a GPU-only refresh and hold a
    reference's base rates at each pass.
    """

    def __init__(self, chosen: Selection, policies: list[Policy], analyzer: Any, options: AnalysisOptions,
                 cadence: Cadence, *, lag: int, stagger: int, delay: int):
        self.specs, self.units, self.spec_units, self.skipped = chosen.specs, chosen.units, chosen.spec_units, \
            chosen.skipped
        index = {u: k for k, u in enumerate(self.units)}
        self.unit_index = np.array([index[u] for u in self.spec_units], dtype=np.int64)
        self.policies, self.analyzer, self.options, self.cadence = list(policies), analyzer, options, cadence
        self.passes = PassRunner(self.specs, [shape for _, shape in chosen.fingerprint], lag=lag, delay=delay,
                                 stagger=stagger)
        self.fused = FusedRunner()
        self.results = Results(self.units, [p.target for p in self.policies])
        self.callbacks: collections.OrderedDict[int, Callable[[dict[str, Any]], None]] = collections.OrderedDict()
        self.groups: GroupSet | None = None
        self.clock = (0, time.perf_counter())  # (step, clock) of the last committed refresh, for Budget
        self.analyze: Callable[..., Report] = self._analyze

    def _analyze(self, specs: list[MatrixSpec], options: AnalysisOptions | None = None) -> Report:
        return self.analyzer.analyze_specs(specs, self.options if options is None else options)

    # --- running passes ------------------------------------------------------------------------------------------
    def now(self, step: int, epoch: int, indices: list[int] | None = None, *, fused: bool = False,
            options: AnalysisOptions | None = None) -> Report | None:
        """Analyse the live weights (the matrices ``indices``, default all; ``options``: other than the usual) and
        commit the factors; the loop waits for all of it - except with ``fused`` when the pass, the policy and the
        lr tensors are all on one GPU: the pass then writes the factors into the lr tensors there, and the commit
        waits for :meth:`settle` (returns None)."""
        indices = list(range(len(self.specs))) if indices is None else indices
        start = time.perf_counter()
        specs = [self.specs[i] for i in indices]
        report = None
        book = self.groups.books[0] if self.groups is not None and len(self.groups.books) == 1 else None
        policy = self.policies[0]
        mapping = policy.device_mapping() if fused and policy.target == "lr" and book is not None else None
        if (mapping is not None and not self.analyzer.distributed and len(indices) == len(self.specs)
                and tensor_lrs(book.groups) is not None):
            index = {u: k for k, u in enumerate(self.units)}
            report = self.fused.start(
                specs, indices, self.options if options is None else options, groups=book.groups,
                base=book.scheduled, group_unit=[index.get(u, -1) for u in book.units],
                unit_index=self.unit_index[indices].tolist(), n_units=len(self.units), metric=policy.metric,
                previous=[self.results.factors[u] for u in self.units], mapping=mapping, started=start)
            if report is None:
                return None
        report = report if report is not None else self.analyze(specs, options)
        return self.commit(report, indices, step, epoch, started_step=step, blocking=time.perf_counter() - start)

    def start(self, step: int, epoch: int) -> None:
        """A refresh is due: its slice analysed and applied now, or (``delay >= 1``) started as a pass due that many
        steps on. A failure is one warning: the units keep their factors, training goes on."""
        try:
            if self.passes.delay:
                self.passes.start(step, self.analyze)
            else:
                self.now(step, epoch, self.passes.take_slice(), fused=True)
        except Exception as e:  # noqa: BLE001 - a failed pass must not stop training; factors are kept
            self.warn_failed(e, step)

    def collect(self, step: int, epoch: int) -> None:
        """Commit the pass due at ``step``, waiting for it if it has not finished."""
        due = self.passes.take_due(step)
        if due is None:
            return
        start = time.perf_counter()
        try:
            self.commit(due.report(), due.indices, step, epoch, started_step=due.started_step,
                        blocking=due.snapshot_seconds + time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001
            self.warn_failed(e, step)

    def settle(self, step: int, epoch: int) -> bool:
        """Commit a refresh whose factors the GPU already wrote into the lr tensors (waits for it once); returns
        whether one was held (the groups' bookkeeping then needs the committed factors)."""
        if self.fused.pending is None:
            return False
        try:
            report, indices, blocking = self.fused.take()
            self.commit(report, indices, step, epoch, started_step=step, blocking=blocking)
        except Exception as e:  # noqa: BLE001 - as a synchronous pass: the units keep their factors (so did the GPU)
            self.warn_failed(e, step)
        return True

    # --- what a finished pass changes --------------------------------------------------------------------------
    def commit(self, report: Report, indices: list[int], step: int, epoch: int, *, started_step: int,
               blocking: float) -> Report:
        """Map a finished pass over the matrices ``indices`` to factors and commit them (all computed before
        anything changes); the other matrices keep the rows of their last analysis. Returns the full report."""
        if [r.name for r in report.rows] != [self.specs[i].name for i in indices]:
            raise RuntimeError("analysis returned rows that do not match the analysed matrices")
        last = self.results.last_report
        rows, fresh = commit.merge_rows(last.rows if last else None, report.rows, indices, len(self.specs))
        if len(indices) != len(self.specs):
            report = Report(rows=rows, seconds=report.seconds, settings=report.settings)
        report.skipped = list(self.skipped)
        failed, newly_failed = commit.failures(rows, self.spec_units, fresh)
        failed_units = np.array([u in failed for u in self.units], dtype=bool)
        outcomes = []
        for policy in self.policies:
            previous = np.array([self.results.knobs[policy.target]["factors"][u] for u in self.units])
            outcome = commit.unit_factors(commit.metric_values(rows, policy.metric), self.unit_index, len(self.units),
                                          failed_units, previous, policy)
            if not outcome.taken:
                raise RuntimeError(f"non-finite or non-positive factors {dict(zip(self.units, outcome.candidate))}"
                                   + (f" for {policy.target}" if len(self.policies) > 1 else ""))
            outcomes.append(outcome)
        agreed = {(f"{p.target}:{u}" if len(self.policies) > 1 else u): f for p, o in zip(self.policies, outcomes)
                  for u, f in zip(self.units, o.factors.tolist())}
        self.analyzer.check_identical(agreed, step=step)
        # all computed: commit
        if self.groups is not None and self.groups.held is not None:
            self.groups.hold()  # the reference holds the base rate of this pass until the next
        record, drift = self.results.commit(report, rows, outcomes, failed, fresh, step=step, epoch=epoch,
                                            started_step=started_step, blocking=blocking)
        for policy in self.policies:
            policy.committed(self.results.knobs[policy.target]["factors"], step, self.groups)
        self._observe(step, drift, blocking)
        if newly_failed:
            reasons = "; ".join(r for u in sorted(newly_failed) for r in failed[u][:2])
            warn(f"TempBalance: spectral pass at step {step} failed for unit(s) {sorted(newly_failed)} ({reasons}); "
                 "they keep their previous factor", RuntimeWarning)
        for fn in list(self.callbacks.values()):
            try:
                fn(record)
            except Exception as e:  # noqa: BLE001 - a logger must not stop training
                warn(f"TempBalance: refresh callback {getattr(fn, '__name__', fn)!r} raised {type(e).__name__}: {e}",
                     RuntimeWarning)
        return report

    def _observe(self, step: int, drift: float, blocking: float) -> None:
        """Tell the cadence what the refresh found (the largest unit drift) and cost (seconds blocked per step)."""
        now = time.perf_counter()
        steps = step - self.clock[0]
        step_seconds = max(now - self.clock[1] - blocking, 0.0) / steps if steps > 0 else math.nan
        self.clock = (step, now)
        self.cadence.observe(step, drift, blocking_seconds=blocking, step_seconds=step_seconds)

    def warn_failed(self, e: BaseException, step: int) -> None:
        warn(f"TempBalance: spectral pass at step {step} failed ({type(e).__name__}: {e}); every unit keeps its "
             "factor", RuntimeWarning)

    def add_callback(self, fn: Callable[[dict[str, Any]], None]) -> RemovableHandle:
        """Call ``fn(record)`` after every committed refresh; returns a handle whose ``remove()`` unregisters it."""
        if not callable(fn):
            raise TypeError(f"refresh callback must be callable, got {type(fn).__name__}")
        handle = RemovableHandle(self.callbacks)
        self.callbacks[handle.id] = fn
        return handle

    # --- checkpoint parts: "passes", "results" and (only for a policy with state) "policies" ---------------------
    def state_parts(self, step: int, with_report: bool) -> dict[str, Any]:
        parts = dict(passes=self.passes.state_dict(on_failure=lambda e: self.warn_failed(e, step)),
                     results=self.results.state_dict(with_report=with_report))
        policies = [p.state_dict() for p in self.policies]
        if any(policies):  # a policy with state of its own (a transition in progress)
            parts["policies"] = policies
        return parts

    def check_parts(self, state: dict[str, Any]) -> None:
        """``ValueError`` saying what is wrong with the parts of ``state`` this object owns."""
        self.passes.check_state(state["passes"])
        self.results.check_state(state["results"])
        policies = state.get("policies", [{}] * len(self.policies))
        if not isinstance(policies, list) or len(policies) != len(self.policies):
            raise ValueError(f"the state has no valid 'policies' part for {len(self.policies)} policies")
        for policy, part in zip(self.policies, policies):
            policy.check_state(part)

    def load_parts(self, state: dict[str, Any], step: int) -> None:
        self.results.load_state_dict(state["results"])
        self.clock = (step, time.perf_counter())
        self.passes.load_state_dict(state["passes"])
        self.fused.drop()  # superseded: the groups get the loaded factors
        for policy, part in zip(self.policies, state.get("policies", [{}] * len(self.policies))):
            policy.load_state_dict(part)

    def nothing_tuned(self, group_units: list[str | None]) -> str | None:
        """Why no param group gets a factor from the analysis (all units untuned, or none of the groups in a
        unit), or None when some do; the reasons come from the last report (or the first pass, while it waits for
        its due step)."""
        report = self.results.last_report
        if report is None and self.passes.pending is not None:
            report = self.passes.pending.report()
            tuned = {u for u, r in zip(self.spec_units, report.rows)
                     if r.ok and math.isfinite(getattr(r, self.policies[0].metric))}
        else:
            tuned = {u for u, v in self.results.unit_values.items() if math.isfinite(v)}
        if not tuned:
            reasons = "; ".join(r.reason for r in (report.rows if report is not None else []) if not r.ok and r.reason)
            return f"no analysed matrix could be fitted ({reasons[:400]})"
        if not any(u in tuned for u in group_units):
            return f"no param group of the optimizer holds a parameter of the tuned units ({sorted(tuned)[:4]}...)"
        return None
