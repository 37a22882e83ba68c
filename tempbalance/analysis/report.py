"""The result of an analysis pass: one row per matrix plus a model-level summary."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .aggregate import unit_means


@dataclass
class LayerResult:
    """Metrics of one analysed matrix. ``status`` is "ok" or why alpha is NaN ("too_few_eigs", "flat_tail",
    "xmin_not_positive", "non_finite", "empty", "error"); ``reason`` says it in words, naming the layer."""

    name: str
    unit: str
    kind: str
    shape: tuple[int, ...]
    n_eigs: int
    alpha: float
    xmin: float
    n_tail: int
    spectral_norm: float
    frobenius: float
    stable_rank: float
    alpha_hat: float
    ks_distance: float
    status: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())


def _fmt(v: float, spec: str = ".3f") -> str:
    return "-" if not math.isfinite(v) else format(v, spec)


@dataclass
class Report:
    """Rows in the order the matrices were enumerated; ``seconds`` is the wall time of the pass; ``settings``
    the options it ran with; ``skipped`` the (name, reason) of tensors that were not analysed at all."""

    rows: list[LayerResult]
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    # --- access ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.rows)

    def __getitem__(self, key: str | int) -> LayerResult:
        if isinstance(key, int):
            return self.rows[key]
        for r in self.rows:
            if r.name == key:
                return r
        near = [r.name for r in self.rows if key in r.name or r.name in key][:5]
        raise KeyError(f"no layer named {key!r} in the report" + (f"; did you mean {near}?" if near else ""))

    def __contains__(self, key: object) -> bool:
        return any(r.name == key for r in self.rows)

    @property
    def alphas(self) -> dict[str, float]:
        """alpha per layer name (NaN for layers without a valid fit)."""
        return {r.name: r.alpha for r in self.rows}

    def unit_alpha(self) -> dict[str, float]:
        """Mean alpha of the ok layers of each unit, units in first-seen order (NaN if a unit has none)."""
        units = list(dict.fromkeys(r.unit for r in self.rows))
        index = {u: k for k, u in enumerate(units)}
        vals = [r.alpha if r.ok else math.nan for r in self.rows]
        means = unit_means(vals, [index[r.unit] for r in self.rows], len(units), backend="torch")
        return dict(zip(units, means.tolist()))

    @property
    def summary(self) -> dict[str, Any]:
        """Counts, and mean/STD (population, ddof=0) of alpha across ok layers and across units."""
        ok = [r for r in self.rows if r.ok]
        layer_mean, layer_std = _mean_std([r.alpha for r in ok])
        unit_alpha = self.unit_alpha()
        unit_mean, unit_std = _mean_std(list(unit_alpha.values()))
        status: dict[str, int] = {}
        for r in self.rows:
            status[r.status] = status.get(r.status, 0) + 1
        return {
            "n_layers": len(self.rows), "n_ok": len(ok), "status_counts": status,
            "alpha_mean": layer_mean, "alpha_std": layer_std,
            "n_units": len(unit_alpha),
            "n_units_ok": sum(math.isfinite(v) for v in unit_alpha.values()), "unit_alpha_mean": unit_mean, "unit_alpha_std": unit_std,
            "seconds": self.seconds,
        }

    # --- export ---------------------------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (``shape`` as a list)."""
        return [{**asdict(r), "shape": list(r.shape)} for r in self.rows]

    def to_pandas(self):
        """One DataFrame row per matrix, columns as :class:`LayerResult` (``shape`` as "AxB")."""
        import pandas as pd

        recs = self.to_records()
        for rec in recs:
            rec["shape"] = "x".join(map(str, rec["shape"]))
        return pd.DataFrame(recs, columns=[f.name for f in fields(LayerResult)])

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text of :meth:`to_pandas`; also written to ``path`` when given."""
        text = self.to_pandas().to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None, indent: int | None = 2) -> str:
        """JSON with ``rows``, ``summary``, ``settings``, ``skipped``, ``seconds`` (NaN/Inf written as null)."""
        payload = {
            "rows": [{k: _finite_or_none(v) for k, v in rec.items()} for rec in self.to_records()],
            "summary": {k: _finite_or_none(v) for k, v in self.summary.items()},
            "settings": {k: str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                         for k, v in self.settings.items()},
            "skipped": [list(s) for s in self.skipped],
            "seconds": self.seconds,
        }
        text = json.dumps(payload, indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], **kwargs: Any) -> "Report":
        """The report whose :meth:`to_records` are ``records`` (``kwargs``: seconds, settings, skipped)."""
        return cls([LayerResult(**{**rec, "shape": tuple(rec["shape"])}) for rec in records], **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The report in a checkpoint (plain Python, ``torch.load(weights_only=True)``-safe): rows, seconds, settings
        (not ``skipped``: TempBalance sets it from the model)."""
        return dict(rows=self.to_records(), seconds=self.seconds, settings=dict(self.settings))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Report":
        """The report :meth:`state_dict` saved."""
        return cls.from_records(state["rows"], seconds=float(state["seconds"]), settings=dict(state["settings"]))

    @classmethod
    def from_json(cls, text: str) -> "Report":
        """The report :meth:`to_json` wrote (nulls come back as NaN)."""
        data = json.loads(text)
        records = [{k: (math.nan if v is None else v) for k, v in rec.items()} for rec in data["rows"]]
        return cls.from_records(records, seconds=data.get("seconds", 0.0), settings=data.get("settings", {}),
                                skipped=[tuple(s) for s in data.get("skipped", [])])

    # --- text -----------------------------------------------------------------------------------------------
    TABLE_COLUMNS = ("layer", "kind", "shape", "N", "alpha", "xmin", "lambda_max", "stable_rank", "KS", "status")

    def table_rows(self) -> list[tuple[str, ...]]:
        """The cells of the text table, one tuple of strings per layer (also used by the CLI's rich table)."""
        return [
            (r.name, r.kind, "x".join(map(str, r.shape)), str(r.n_eigs), _fmt(r.alpha), _fmt(r.xmin, ".3g"),
             _fmt(r.spectral_norm, ".4g"), _fmt(r.stable_rank, ".2f"), _fmt(r.ks_distance, ".3f"), r.status)
            for r in self.rows
        ]

    def summary_lines(self) -> list[str]:
        s = self.summary
        lines = [
            f"{s['n_ok']} of {s['n_layers']} layers fitted; alpha mean {_fmt(s['alpha_mean'])} "
            f"std {_fmt(s['alpha_std'])}; over {s['n_units_ok']} of {s['n_units']} units mean {_fmt(s['unit_alpha_mean'])} "
            f"std {_fmt(s['unit_alpha_std'])}; {self.seconds:.2f} s",
        ]
        lines += [f"  {r.status}: {r.reason}" for r in self.rows if not r.ok]
        if self.skipped:
            lines.append(f"not analysed: {len(self.skipped)} tensor(s)")
            lines += [f"  {name}: {reason}" for name, reason in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"  ... and {len(self.skipped) - 10} more (Report.skipped)")
        return lines

    def __str__(self) -> str:
        header = self.TABLE_COLUMNS
        body = self.table_rows()
        widths = [max([len(h)] + [len(row[k]) for row in body]) for k, h in enumerate(header)]
        left = {0, 1, 9}  # text columns left-aligned, numbers right-aligned

        def line(cells):
            return "  ".join(c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))

        out = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in body]
        return "\n".join(out + [""] + self.summary_lines())

    def __repr__(self) -> str:
        s = self.summary
        return (f"Report({s['n_layers']} layers, {s['n_ok']} ok, alpha mean {_fmt(s['alpha_mean'])}, "
                f"{self.seconds:.2f} s)")
