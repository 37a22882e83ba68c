"""What TempBalance's refreshes found so far: the factors in force, the unit values and alphas behind them, the
history, the seconds spent - its checkpoint part ``"results"``, checked and loaded here."""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from ..analysis.report import LayerResult, Report
from .commit import UnitFactors

STATE_KEYS = ("factors", "unit_values", "alphas", "alpha_std", "spectral_seconds", "blocking_seconds", "history")


class Results:
    """The results of the refreshes of one TempBalance over ``units``."""

    def __init__(self, units: Sequence[str]):
        self.units = list(units)
        self.factors: dict[str, float] = {u: 1.0 for u in self.units}
        self.unit_values: dict[str, float] = {u: math.nan for u in self.units}
        self.alphas: dict[str, float] = {}
        self.alpha_std = math.nan
        self.spectral_seconds = 0.0
        self.blocking_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.last_report: Report | None = None

    def commit(self, report: Report, rows: Sequence[LayerResult], outcome: UnitFactors, failed: dict[str, list[str]],
               fresh: set[int], *, step: int, epoch: int, started_step: int, blocking: float
               ) -> tuple[dict[str, Any], float]:
        """Take a pass's outcome (``rows``: every matrix's row, ``fresh`` the ones just analysed; units in ``failed``
        keep their value). Returns its history record and the largest change of a unit value since the last pass
        (NaN without one: what an adaptive cadence follows)."""
        stale_drift = max((abs(rows[i].alpha - self.alphas[rows[i].name]) for i in fresh
                           if math.isfinite(rows[i].alpha) and math.isfinite(self.alphas.get(rows[i].name, math.nan))),
                          default=math.nan)
        previous = self.unit_values
        self.factors = {u: float(outcome.factors[k]) for k, u in enumerate(self.units)}
        self.unit_values = {u: (previous.get(u, math.nan) if u in failed else float(outcome.values[k]))
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
        self.history.append(record)
        drift = [abs(self.unit_values[u] - previous[u]) for u in self.units
                 if math.isfinite(self.unit_values[u]) and math.isfinite(previous.get(u, math.nan))]
        return record, max(drift) if drift else math.nan

    # --- checkpointing --------------------------------------------------------------------------------------------
    def state_dict(self, with_report: bool) -> dict[str, Any]:
        """``with_report``: also the last report (a staggered pass merges its rows with the next slice's)."""
        return dict(factors=dict(self.factors), unit_values=dict(self.unit_values), alphas=dict(self.alphas),
                    alpha_std=self.alpha_std, spectral_seconds=self.spectral_seconds,
                    blocking_seconds=self.blocking_seconds, history=copy.deepcopy(self.history),
                    last_report=self.last_report.state_dict() if with_report and self.last_report else None)

    def check_state(self, state: Any) -> None:
        """``ValueError`` saying what is wrong when ``state`` cannot be loaded into these units."""
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"the state has no valid 'results' part (expected keys {list(STATE_KEYS)})")
        factors = state["factors"]
        if not isinstance(factors, dict) or set(factors) != set(self.units) or not all(
                isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in factors.values()):
            raise ValueError(f"the saved factors do not cover this object's {len(self.units)} units with finite "
                             "positive numbers")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.factors = {u: float(f) for u, f in state["factors"].items()}
        self.unit_values = {u: float(v) for u, v in state["unit_values"].items()}
        self.alphas = {n: float(a) for n, a in state["alphas"].items()}
        self.alpha_std = float(state["alpha_std"])
        self.spectral_seconds = float(state["spectral_seconds"])
        self.blocking_seconds = float(state["blocking_seconds"])
        self.history = copy.deepcopy(list(state["history"]))
        if state.get("last_report") is not None:
            self.last_report = Report.from_state_dict(state["last_report"])
