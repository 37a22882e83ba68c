"""What TempBalance's refreshes found so far: the factors in force for every knob, the unit values and alphas
behind them, the history, the seconds spent - its checkpoint part ``"results"``, checked and loaded here.

The first knob (the first policy's target, the learning rate by default) is the primary one: ``factors`` and
``unit_values`` are its, in the state and in every history record, as they always were. Further knobs (a weight
decay driven from the same pass) are under ``"knobs"``: ``{target: {"factors": ..., "unit_values": ...}}``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from ..analysis.report import LayerResult, Report
from .commit import UnitFactors

STATE_KEYS = ("factors", "unit_values", "alphas", "alpha_std", "spectral_seconds", "blocking_seconds", "history")


class Results:
    """The results of the refreshes of one TempBalance over ``units``, for the knobs ``targets``."""

    def __init__(self, units: Sequence[str], targets: Sequence[str] = ("lr",)):
        self.units, self.targets = list(units), list(targets)
        self.knobs: dict[str, dict[str, dict[str, float]]] = {
            t: dict(factors={u: 1.0 for u in self.units}, unit_values={u: math.nan for u in self.units})
            for t in self.targets}
        self.alphas: dict[str, float] = {}
        self.alpha_std = math.nan
        self.spectral_seconds = 0.0
        self.blocking_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.last_report: Report | None = None

    @property
    def factors(self) -> dict[str, float]:
        """The primary knob's factor per unit."""
        return self.knobs[self.targets[0]]["factors"]

    @property
    def unit_values(self) -> dict[str, float]:
        """The primary knob's value per unit (its policy's metric, aggregated)."""
        return self.knobs[self.targets[0]]["unit_values"]

    def factors_by_target(self) -> dict[str, dict[str, float]]:
        return {t: k["factors"] for t, k in self.knobs.items()}

    def commit(self, report: Report, rows: Sequence[LayerResult], outcomes: Sequence[UnitFactors],
               failed: dict[str, list[str]], fresh: set[int], *, step: int, epoch: int, started_step: int,
               blocking: float) -> tuple[dict[str, Any], float]:
        """Take a pass's outcome (``rows``: every matrix's row, ``fresh`` the ones just analysed; ``outcomes``: one
        per knob; units in ``failed`` keep their value). Returns its history record and the largest change of a
        primary unit value since the last pass (NaN without one: what an adaptive cadence follows)."""
        stale_drift = max((abs(rows[i].alpha - self.alphas[rows[i].name]) for i in fresh
                           if math.isfinite(rows[i].alpha) and math.isfinite(self.alphas.get(rows[i].name, math.nan))),
                          default=math.nan)
        previous = self.unit_values
        for target, outcome in zip(self.targets, outcomes):
            knob = self.knobs[target]
            knob["factors"] = {u: float(outcome.factors[k]) for k, u in enumerate(self.units)}
            knob["unit_values"] = {u: (knob["unit_values"].get(u, math.nan) if u in failed else float(outcome.values[k]))
                                   for k, u in enumerate(self.units)}
        self.alphas = {r.name: float(r.alpha) for r in rows}
        ok = np.array([r.alpha for r in rows if r.ok and math.isfinite(r.alpha)], dtype=np.float64)
        self.alpha_std = float(ok.std()) if ok.size else math.nan
        self.spectral_seconds += report.seconds
        self.blocking_seconds += blocking
        self.last_report = report
        record = dict(step=step, epoch=epoch, started_step=started_step, seconds=report.seconds,
                      blocking_seconds=blocking, unit_values=dict(self.unit_values), factors=dict(self.factors),
                      alpha_std=self.alpha_std, failed=sorted(failed), alphas=dict(self.alphas),
                      analysed=len(fresh), stale_drift=stale_drift)
        if len(self.targets) > 1:
            record["knobs"] = self._other_knobs()
        self.history.append(record)
        drift = [abs(self.unit_values[u] - previous[u]) for u in self.units
                 if math.isfinite(self.unit_values[u]) and math.isfinite(previous.get(u, math.nan))]
        return record, max(drift) if drift else math.nan

    def _other_knobs(self) -> dict[str, dict[str, dict[str, float]]]:
        return {t: {k: dict(v) for k, v in self.knobs[t].items()} for t in self.targets[1:]}

    # --- checkpointing --------------------------------------------------------------------------------------------
    def state_dict(self, with_report: bool) -> dict[str, Any]:
        """``with_report``: also the last report (a staggered pass merges its rows with the next slice's)."""
        state = dict(factors=dict(self.factors), unit_values=dict(self.unit_values), alphas=dict(self.alphas),
                     alpha_std=self.alpha_std, spectral_seconds=self.spectral_seconds,
                     blocking_seconds=self.blocking_seconds, history=copy.deepcopy(self.history),
                     last_report=self.last_report.state_dict() if with_report and self.last_report else None)
        if len(self.targets) > 1:
            state["knobs"] = self._other_knobs()
        return state

    def check_state(self, state: Any) -> None:
        """``ValueError`` saying what is wrong when ``state`` cannot be loaded into these units and knobs."""
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"the state has no valid 'results' part (expected keys {list(STATE_KEYS)})")
        others = state.get("knobs", {})
        if not isinstance(others, dict) or sorted(others) != sorted(self.targets[1:]):
            raise ValueError(f"the state was saved with the knobs {[self.targets[0], *sorted(others)]}, this object "
                             f"drives {self.targets}")
        for factors in [state["factors"], *(k.get("factors") for k in others.values())]:
            if not isinstance(factors, dict) or set(factors) != set(self.units) or not all(
                    isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in factors.values()):
                raise ValueError(f"the saved factors do not cover this object's {len(self.units)} units with finite "
                                 "positive numbers")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        saved = {self.targets[0]: dict(factors=state["factors"], unit_values=state["unit_values"]),
                 **state.get("knobs", {})}
        self.knobs = {t: dict(factors={u: float(f) for u, f in saved[t]["factors"].items()},
                              unit_values={u: float(v) for u, v in saved[t]["unit_values"].items()})
                      for t in self.targets}
        self.alphas = {n: float(a) for n, a in state["alphas"].items()}
        self.alpha_std = float(state["alpha_std"])
        self.spectral_seconds = float(state["spectral_seconds"])
        self.blocking_seconds = float(state["blocking_seconds"])
        self.history = copy.deepcopy(list(state["history"]))
        if state.get("last_report") is not None:
            self.last_report = Report.from_state_dict(state["last_report"])
