"""How TempBalance's spectral passes run: which matrices a refresh analyses, and when its result is ready.

TempBalance decides when a refresh is due and what a finished pass does (map it to factors and commit them); a
:class:`PassRunner` owns the mechanism in between. Who analyses a pass is an analyzer: :class:`LocalAnalyzer` (this
process) or :class:`tempbalance.distributed.Coordinator` (the ranks share it), with the same interface:
``analyze_specs(specs, options) -> Report``, ``check_identical(factors, step)`` (every rank sets the same factors;
nothing to check in one process) and ``distributed``. A :class:`PassRunner` owns:

* stagger (``stagger >= 2``): the matrices are split once into ``stagger`` slices of about equal spectral cost
  (:func:`stagger_slices`), and each scheduled refresh analyses the next slice in turn;
* delay: with ``delay >= 1`` a refresh becomes a :class:`Pass` applied ``delay`` steps after it started - analysed
  in a background thread on a snapshot of the weights (``lag >= 1``, :func:`snapshot`), or on the live weights at
  once (a reference whose factors act from the update after the pass). While a pass is pending, a new refresh is
  skipped and its step recorded in ``skipped_refreshes``;
* its own checkpoint part: the pending pass (its report, waited for), the next slice, the skipped refreshes.

Which slice a refresh takes and at which step a pass is applied depend on step counts only, never on timing, so
runs (and resumed runs) are deterministic.
"""
from __future__ import annotations

import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import analysis
from ..analysis import streams
from ..analysis.cost import assign, cost
from ..analysis.options import AnalysisOptions
from ..analysis.report import Report
from ..analysis.specs import MatrixSpec

# what the state of a runner holds (TempBalance's checkpoint part "passes")
STATE_KEYS = ("pending", "next_slice", "skipped_refreshes")
_PASS_KEYS = ("started_step", "due_step", "report", "indices")

Analyze = Callable[[list[MatrixSpec]], Report]


class LocalAnalyzer:
    """The passes of a single process: :func:`tempbalance.analysis.analyze_specs`."""

    distributed = False

    def analyze_specs(self, specs: list[MatrixSpec], options: AnalysisOptions) -> Report:
        return analysis.analyze_specs(specs, options)

    def check_identical(self, factors: dict[str, float], step: int) -> None:
        """One process: nothing to agree on."""


@dataclass
class Pass:
    """A pass over the matrices ``indices`` on the weights of ``started_step``, applied at ``due_step``;
    ``snapshot_seconds``: what starting it held the training loop up (the snapshot, or a pass run at once)."""

    started_step: int
    due_step: int
    future: Future
    snapshot_seconds: float
    indices: list[int]

    def report(self) -> Report:
        """The pass's report, waiting for it if it has not finished (its exception if it failed)."""
        return self.future.result()


def finished(report: Report) -> Future:
    """A pass that has finished already, as a background one looks when it is collected."""
    future: Future = Future()
    future.set_result(report)
    return future


def _raise(error: BaseException) -> torch.Tensor:
    raise error


def snapshot(specs: Sequence[MatrixSpec]) -> tuple[list[MatrixSpec], streams.Handoff]:
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


def stagger_slices(costs: Sequence[float], k: int) -> list[list[int]]:
    """The indices of ``costs`` split into ``k`` slices of about equal total cost (largest first onto the cheapest
    slice, as ranks share a distributed pass), each in the original order."""
    owners, _ = assign(list(costs), k)
    return [[i for i, o in enumerate(owners) if o == j] for j in range(k)]


class PassRunner:
    """The passes of one TempBalance over ``specs`` (``shapes``: their weights' shapes, for the slice costs).

    ``lag``: 0 = a delayed pass analyses the live weights when it starts; ``k >= 1`` = a snapshot analysed in a
    background thread. ``delay`` (``>= lag``): steps from a pass's start to its application (0: no pass is ever
    pending; the caller analyses :meth:`take_slice` at once). ``stagger``: slices (1 = every matrix each time).
    """

    def __init__(self, specs: Sequence[MatrixSpec], shapes: Sequence[Sequence[int]], *, lag: int = 0,
                 delay: int = 0, stagger: int = 1):
        for arg, v, lo in (("lag", lag, 0), ("delay", delay, lag), ("stagger", stagger, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{arg} must be an integer >= {lo}, got {v!r}")
        if len(shapes) != len(specs):
            raise ValueError(f"{len(shapes)} shapes for {len(specs)} matrices")
        self.specs = list(specs)
        self.lag, self.delay, self.stagger = lag, delay, stagger
        costs = ([cost(tuple(shape), s.kind) for s, shape in zip(specs, shapes)] if stagger > 1
                 else [0.0] * len(specs))  # one slice needs no costs
        self.slices = stagger_slices(costs, stagger)
        self.next_slice = 0
        self.skipped_refreshes: list[int] = []
        self.pending: Pass | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- starting and collecting ----------------------------------------------------------------------------
    def take_slice(self) -> list[int]:
        """The matrices the next scheduled refresh analyses (all of them without staggering)."""
        indices = self.slices[self.next_slice % len(self.slices)]
        self.next_slice += 1
        return indices

    def start(self, step: int, analyze: Analyze) -> None:
        """A refresh due at ``step`` (``delay >= 1``): the next slice, analysed by ``analyze(specs)`` - in the
        background on a snapshot (``lag >= 1``) or now - and due ``delay`` steps on. Skipped (its step recorded)
        while a pass is pending. An error of the snapshot or the analysis propagates; the slice is taken then."""
        if self.pending is not None:
            self.skipped_refreshes.append(step)  # deterministic: depends on step counts only
            return
        start = time.perf_counter()
        indices = self.take_slice()
        specs = [self.specs[i] for i in indices]
        if self.lag:
            copies, handoff = snapshot(specs)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempbalance")
            future = self._executor.submit(handoff.run, analyze, copies)
        else:
            future = finished(analyze(specs))
        self.pending = Pass(step, step + self.delay, future, time.perf_counter() - start, indices)

    def add_finished(self, report: Report, step: int, seconds: float) -> None:
        """A pass over every matrix that ran at ``step`` (``seconds``), due ``delay`` steps on (the pass at
        construction under a reference whose factors act from the update after it)."""
        self.pending = Pass(step, step + self.delay, finished(report), seconds, list(range(len(self.specs))))

    def take_due(self, step: int) -> Pass | None:
        """The pending pass if it is due at ``step`` (no longer pending then; :meth:`Pass.report` waits for it)."""
        p = self.pending
        if p is None or step < p.due_step:
            return None
        self.pending = None
        return p

    def drop(self) -> None:
        """Forget the pending pass (a newer one supersedes it)."""
        if self.pending is not None:
            self.pending.future.cancel()
            self.pending = None

    def wait(self) -> None:
        """Block until the pending pass has finished (it is still applied at its due step)."""
        if self.pending is not None:
            futures.wait([self.pending.future])

    def shutdown(self, wait: bool = True) -> None:
        """Stop the background thread (``wait``: after the pass it runs)."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._executor = None

    # --- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self, on_failure: Callable[[BaseException], None]) -> dict[str, Any]:
        """The pending pass (waited for: saved with its report and due step, so a resumed run applies it at the
        same step), the next slice, the skipped refreshes. A pending pass that failed is dropped and handed to
        ``on_failure`` (it would fail the same way at its due step: nothing to resume)."""
        pending = None
        if (p := self.pending) is not None:
            try:
                pending = dict(started_step=p.started_step, due_step=p.due_step, report=p.report().state_dict(),
                               indices=list(p.indices))
            except Exception as e:  # noqa: BLE001
                self.pending = None
                on_failure(e)
        return dict(pending=pending, next_slice=self.next_slice, skipped_refreshes=list(self.skipped_refreshes))

    def check_state(self, state: Any) -> None:
        """``ValueError`` saying what is wrong when ``state`` cannot be loaded."""
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"passes: the saved state lacks some of {list(STATE_KEYS)}")
        pending = state["pending"]
        if pending is not None and (not isinstance(pending, dict) or any(k not in pending for k in _PASS_KEYS)):
            raise ValueError("the saved pending pass is incomplete")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: a pending pass is superseded by the saved one (or none)."""
        self.check_state(state)
        self.drop()
        self.skipped_refreshes = [int(x) for x in state["skipped_refreshes"]]
        self.next_slice = int(state["next_slice"])
        if (p := state["pending"]) is not None:
            self.pending = Pass(int(p["started_step"]), int(p["due_step"]),
                                finished(Report.from_state_dict(p["report"])), 0.0, [int(i) for i in p["indices"]])
