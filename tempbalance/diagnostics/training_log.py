"""What TempBalance did during training, per refresh: flat records, CSV, optional TensorBoard, a callback.

Every refresh of a :class:`~tempbalance.TempBalance` appends a record to ``tb.history`` (``step``, ``epoch``,
``seconds``, ``unit_values``, ``factors``, ``alpha_std``, ``failed``). :func:`flatten_history` turns those into one
row per (refresh, unit); :class:`TrainingLog` writes them as they appear::

    tb = TempBalance(model, opt, base_scheduler=sched, interval=100)
    log = TrainingLog(tb, csv="runs/tb.csv", tensorboard="runs/tb")      # tensorboard optional
    for batch in loader:
        ...; opt.step(); tb.step()
        log.poll()                      # cheap: only new refreshes are written
    log.close()
    log.plot("runs/alpha.png")          # alpha / STD / factors over training

TempBalance offers ``add_refresh_callback``: the log registers itself there, so every refresh is logged the
moment it is applied and ``poll()`` is not needed (calling it anyway is harmless: each refresh is logged once).
With an object that has no such hook, call ``poll()`` after each ``tb.step()``.
"""
from __future__ import annotations

import csv as _csv
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

CSV_COLUMNS = ("step", "epoch", "unit", "alpha", "factor", "alpha_std", "seconds", "failed")
LAYER_CSV_COLUMNS = ("step", "epoch", "layer", "unit", "alpha")


def flatten_history(history: Iterable[dict]) -> list[dict[str, Any]]:
    """One row per (refresh, unit) with :data:`CSV_COLUMNS`: ``alpha`` is the unit's mean alpha (the scheduler's
    metric) at that refresh, ``factor`` its LR factor, ``alpha_std`` the STD of alpha across layers, ``seconds``
    the refresh's wall time, ``failed`` whether the unit's spectral pass failed (it then kept its old factor)."""
    rows = []
    for rec in getattr(history, "history", history):
        units = list(dict.fromkeys(list(rec["unit_values"]) + list(rec["factors"])))
        failed = set(rec.get("failed", ()))
        for u in units:
            rows.append(dict(step=int(rec["step"]), epoch=int(rec.get("epoch", 0)), unit=u,
                             alpha=float(rec["unit_values"].get(u, math.nan)),
                             factor=float(rec["factors"].get(u, math.nan)), alpha_std=float(rec["alpha_std"]),
                             seconds=float(rec.get("seconds", math.nan)), failed=u in failed))
    return rows


def _open_csv(path: str | os.PathLike[str], columns: tuple[str, ...], append: bool):
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fresh = not append or not p.exists() or p.stat().st_size == 0
    fh = open(p, "a" if append else "w", newline="")
    writer = _csv.DictWriter(fh, fieldnames=columns)
    if fresh:
        writer.writeheader()
    return fh, writer


def _open_tensorboard(tensorboard: Any):
    """``(writer, owned)``: a ready writer (anything with ``add_scalar``) as given, or a new SummaryWriter."""
    if hasattr(tensorboard, "add_scalar"):
        return tensorboard, False
    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError("TrainingLog(tensorboard=...) needs the tensorboard package, which is not installed: "
                          "pip install tensorboard (or pass csv= only)")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(tensorboard)), True


class TrainingLog:
    """Logs every TempBalance refresh once: to ``rows`` (always), a CSV, TensorBoard and/or a callback.

    Args:
        tb: the :class:`~tempbalance.TempBalance` (anything with a ``history`` list of refresh records).
        csv: CSV file of :func:`flatten_history` rows (:data:`CSV_COLUMNS`), written as refreshes happen.
        layers_csv: CSV of per-layer alphas (:data:`LAYER_CSV_COLUMNS`, NaN where a layer has no fit) from the
            record's ``alphas`` (or, for records without them, ``tb.last_report`` when the record is the newest).
        tensorboard: a log directory (needs the ``tensorboard`` package) or a ready ``SummaryWriter``; scalars
            ``{tag}/alpha_std``, ``{tag}/seconds``, ``{tag}/alpha/<unit>``, ``{tag}/factor/<unit>`` at the refresh
            step, plus a histogram ``{tag}/layer_alpha`` of the per-layer alphas.
        callback: called with each new refresh record (the ``tb.history`` dict).
        include_existing: also log the refreshes already in ``tb.history`` (the one at construction); a resumed
            run that continues an existing CSV wants ``include_existing=False, append=True``.
        append: append to existing CSV files instead of overwriting them (a header only for a new/empty file).
        tag: TensorBoard tag prefix.
    """

    def __init__(self, tb: Any, *, csv: str | os.PathLike[str] | None = None,
                 layers_csv: str | os.PathLike[str] | None = None, tensorboard: Any = None,
                 callback: Callable[[dict], None] | None = None, include_existing: bool = True,
                 append: bool = False, tag: str = "tempbalance"):
        if not isinstance(getattr(tb, "history", None), list):
            raise TypeError(f"tb must be a TempBalance (with a history list), got {type(tb).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self.tb, self.callback, self.tag = tb, callback, tag
        self.rows: list[dict[str, Any]] = []
        self.layer_rows: list[dict[str, Any]] = []
        self._files: list[Any] = []
        self._csv = self._layers_csv = None
        self._writer, self._own_writer = None, False
        try:
            if csv is not None:
                fh, self._csv = _open_csv(csv, CSV_COLUMNS, append)
                self._files.append(fh)
            if layers_csv is not None:
                fh, self._layers_csv = _open_csv(layers_csv, LAYER_CSV_COLUMNS, append)
                self._files.append(fh)
            if tensorboard is not None:
                self._writer, self._own_writer = _open_tensorboard(tensorboard)
        except BaseException:
            self.close()
            raise
        self._history = tb.history
        self._seen = 0 if include_existing else len(tb.history)
        self._last_step: int | None = tb.history[self._seen - 1]["step"] if self._seen else None
        register = getattr(tb, "add_refresh_callback", None)
        self._handle = register(self) if callable(register) else None
        self.poll()

    # --- logging ----------------------------------------------------------------------------------------------
    def __call__(self, record: dict | None = None, *args: Any, **kwargs: Any) -> None:
        """The scheduler hook: log whatever is new (the record passed is in ``tb.history`` already)."""
        self.poll()

    def poll(self) -> list[dict[str, Any]]:
        """Log the refreshes added to ``tb.history`` since the last call; returns their flat rows."""
        hist = self.tb.history
        if hist is not self._history:  # load_state_dict replaced the history: continue after the last logged step
            self._history = hist
            self._seen = 0 if self._last_step is None else sum(1 for r in hist if r["step"] <= self._last_step)
        new = hist[self._seen:]
        out: list[dict[str, Any]] = []
        for k, rec in enumerate(new):
            newest = self._seen + k == len(hist) - 1
            rows = flatten_history([rec])
            out += rows
            self._emit(rec, rows, newest)
        self._seen = len(hist)
        if new:
            self._last_step = new[-1]["step"]
            for fh in self._files:
                fh.flush()
        return out

    def _layer_rows(self, rec: dict, newest: bool) -> list[dict[str, Any]]:
        report = getattr(self.tb, "last_report", None)
        unit_of = {r.name: r.unit for r in report.rows} if report is not None else {}
        if isinstance(rec.get("alphas"), dict):
            alphas = rec["alphas"]
        elif newest and report is not None:
            alphas = {r.name: r.alpha for r in report.rows}
        else:
            return []
        step, epoch = int(rec["step"]), int(rec.get("epoch", 0))
        return [dict(step=step, epoch=epoch, layer=name, unit=unit_of.get(name, ""), alpha=float(a))
                for name, a in alphas.items()]

    def _emit(self, rec: dict, rows: list[dict[str, Any]], newest: bool) -> None:
        self.rows += rows
        if self._csv is not None:
            self._csv.writerows(rows)
        layer_rows = self._layer_rows(rec, newest)
        self.layer_rows += layer_rows
        if self._layers_csv is not None:
            self._layers_csv.writerows(layer_rows)
        if self._writer is not None:
            step, w = int(rec["step"]), self._writer
            w.add_scalar(f"{self.tag}/alpha_std", float(rec["alpha_std"]), step)
            w.add_scalar(f"{self.tag}/seconds", float(rec.get("seconds", math.nan)), step)
            for row in rows:
                w.add_scalar(f"{self.tag}/alpha/{row['unit']}", row["alpha"], step)
                w.add_scalar(f"{self.tag}/factor/{row['unit']}", row["factor"], step)
            alphas = [r["alpha"] for r in layer_rows if math.isfinite(r["alpha"])]
            if alphas and hasattr(w, "add_histogram"):
                import numpy as np

                w.add_histogram(f"{self.tag}/layer_alpha", np.asarray(alphas), step)
        if self.callback is not None:
            self.callback(rec)

    # --- results ----------------------------------------------------------------------------------------------
    def to_pandas(self):
        """The flat rows logged so far as a DataFrame (:data:`CSV_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(CSV_COLUMNS))

    def plot(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """:func:`~tempbalance.diagnostics.alpha_over_training` of the run so far; returns the PNG's path."""
        from .plots import alpha_over_training

        return alpha_over_training(self.tb.history, path, **kwargs)

    def close(self) -> None:
        """Log what is pending, then close the CSV files and a SummaryWriter this log opened (idempotent)."""
        if getattr(self, "_history", None) is not None and (self._files or self._writer is not None):
            self.poll()
        for fh in self._files:
            fh.close()
        self._files = []
        self._csv = self._layers_csv = None
        if self._writer is not None:
            if self._own_writer:
                self._writer.close()
            elif hasattr(self._writer, "flush"):
                self._writer.flush()
        self._writer = None
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None and hasattr(handle, "remove"):
            handle.remove()  # a closed log is no longer called at refreshes

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrainingLog({len(self.rows)} rows, {self._seen} refreshes)"
