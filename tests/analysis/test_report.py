"""Report: access, summary statistics, exports and the text table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tempbalance.analysis.report import LayerResult, Report


def row(name, unit, alpha, status="ok"):
    return LayerResult(name, unit, "linear", (8, 4), 4, alpha, 0.5, 2, 3.0, 6.0, 2.0, alpha * math.log10(3.0),
                       0.1, status, "" if status == "ok" else f"layer '{name}': why")


@pytest.fixture
def report():
    rows = [row("b0.q", "b0", 2.0), row("b0.k", "b0", 4.0), row("b1.q", "b1", 3.0),
            row("b1.k", "b1", math.nan, "flat_tail"), row("b2.q", "b2", math.nan, "too_few_eigs")]
    return Report(rows, seconds=0.25, settings={"xmin_pos": 2.0}, skipped=[("b0.bias", "1-d")])


def test_summary_statistics(report):
    s = report.summary
    assert s["n_layers"] == 5 and s["n_ok"] == 3
    assert s["alpha_mean"] == pytest.approx(3.0)
    assert s["alpha_std"] == pytest.approx(np.std([2.0, 4.0, 3.0]))
    assert report.unit_alpha() == pytest.approx({"b0": 3.0, "b1": 3.0, "b2": math.nan}, nan_ok=True)
    assert s["n_units"] == 3 and s["n_units_ok"] == 2
    assert s["unit_alpha_mean"] == pytest.approx(3.0) and s["unit_alpha_std"] == pytest.approx(0.0)
    assert s["status_counts"] == {"ok": 3, "flat_tail": 1, "too_few_eigs": 1}
    assert report.seconds == 0.25


def test_access(report):
    assert report["b1.q"].alpha == 3.0
    assert report[0].name == "b0.q"
    assert "b0.k" in report and "nope" not in report and len(report) == 5
    with pytest.raises(KeyError, match="b0.q"):
        report["b0"]  # suggests the close names
    assert report.alphas["b0.k"] == 4.0


def test_json_roundtrip(report, tmp_path):
    path = tmp_path / "r.json"
    text = report.to_json(path)
    data = json.loads(path.read_text())
    assert data == json.loads(text)
    assert data["rows"][3]["alpha"] is None  # NaN written as null: valid JSON
    assert data["summary"]["alpha_mean"] == pytest.approx(3.0)
    back = Report.from_json(text)
    assert [r.name for r in back.rows] == [r.name for r in report.rows]
    assert back.rows[0] == report.rows[0] and math.isnan(back.rows[3].alpha)
    assert back.skipped == report.skipped


def test_pandas_and_csv(report, tmp_path):
    df = report.to_pandas()
    assert list(df["name"]) == [r.name for r in report.rows]
    assert df.loc[0, "shape"] == "8x4" and np.isnan(df.loc[3, "alpha"])
    path = tmp_path / "r.csv"
    text = report.to_csv(path)
    assert path.read_text() == text
    assert text.splitlines()[0].startswith("name,unit,kind,shape,n_eigs,alpha")
    assert len(text.strip().splitlines()) == 6


def test_str_is_an_aligned_table(report):
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["layer", "kind", "shape", "N", "alpha"]
    widths = {len(line) for line in lines[:7]}
    assert len(widths) == 1, "header, rule and rows have one width"
    assert "b1.k" in text and "flat_tail" in text and "layer 'b1.k': why" in text
    assert "3 of 5 layers fitted" in text
    assert "3 ok" in repr(report)


def test_empty_report():
    rep = Report([])
    assert rep.summary["n_layers"] == 0 and math.isnan(rep.summary["alpha_mean"])
    assert "0 of 0" in str(rep)
    assert json.loads(rep.to_json())["rows"] == []
