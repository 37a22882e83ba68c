"""TrainingLog: every TempBalance refresh logged exactly once - rows and CSV equal tb.history, per-layer alphas equal
the refresh's report, TensorBoard scalars, callbacks, resume and the optional scheduler hook."""
from __future__ import annotations

import copy
import csv
import importlib.util
import math

import pytest
import torch
from torch import nn

from tempbalance import TempBalance
from tempbalance.diagnostics import CSV_COLUMNS, LAYER_CSV_COLUMNS, TrainingLog, flatten_history


def make_tb(interval: int = 2, unit: str = "layer", seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 24))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return TempBalance(model, opt, interval=interval, min_eigs=8, backend="torch", unit=unit)


def train(tb, steps: int, log: TrainingLog | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, 24, generator=g)
    for _ in range(steps):
        tb.optimizer.zero_grad()
        ((tb.model(x) - y) ** 2).mean().backward()
        tb.optimizer.step()
        tb.step()
        if log is not None:
            log.poll()


def expected_rows(history) -> list[dict]:
    """The flat rows written from tb.history independently of flatten_history: one per (refresh, unit)."""
    out = []
    for rec in history:
        for u in rec["factors"]:
            out.append({"step": rec["step"], "epoch": rec["epoch"], "unit": u, "alpha": rec["unit_values"][u],
                        "factor": rec["factors"][u], "alpha_std": rec["alpha_std"], "seconds": rec["seconds"],
                        "failed": u in rec["failed"]})
    return out


def read_csv(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def assert_same(csv_rows: list[dict], rows: list[dict]) -> None:
    assert len(csv_rows) == len(rows)
    for got, want in zip(csv_rows, rows):
        assert int(got["step"]) == want["step"] and int(got["epoch"]) == want["epoch"] and got["unit"] == want["unit"]
        for key in ("alpha", "factor", "alpha_std", "seconds"):
            g, w = float(got[key]), float(want[key])
            assert (math.isnan(g) and math.isnan(w)) or g == w, (key, g, w)  # repr round-trips floats exactly
        assert got["failed"] == str(want["failed"])


def test_csv_rows_equal_the_history(tmp_path):
    tb = make_tb()
    log = TrainingLog(tb, csv=tmp_path / "tb.csv")
    train(tb, 7, log)
    log.close()
    assert len(tb.history) == 4  # construction + steps 2, 4, 6
    header, rows = read_csv(tmp_path / "tb.csv")
    assert header == list(CSV_COLUMNS)
    assert_same(rows, expected_rows(tb.history))
    assert log.rows == flatten_history(tb.history) == expected_rows(tb.history)
    assert len(rows) == 4 * 3  # three layers as units
    df = log.to_pandas()
    assert list(df.columns) == list(CSV_COLUMNS) and len(df) == 12


class PollOnly:
    """A TempBalance seen through an object without the refresh hook: the log must poll."""

    def __init__(self, tb):
        self.tb = tb

    @property
    def history(self):
        return self.tb.history

    @property
    def last_report(self):
        return self.tb.last_report


def test_the_scheduler_hook_logs_without_polling(tmp_path):
    tb = make_tb(interval=1)
    log = TrainingLog(tb, csv=tmp_path / "a.csv")
    train(tb, 3)  # no polling: TempBalance calls the log after each refresh
    assert len(log.rows) == 4 * 3 and log.poll() == []
    log.close()
    assert_same(read_csv(tmp_path / "a.csv")[1], expected_rows(tb.history))


def test_poll_is_idempotent_and_close_logs_what_is_pending(tmp_path):
    tb = make_tb(interval=1)
    log = TrainingLog(PollOnly(tb), csv=tmp_path / "a.csv")
    train(tb, 3)  # no polling during the loop
    assert len(log.rows) == 3  # only the construction refresh so far
    assert len(log.poll()) == 9 and log.poll() == []
    train(tb, 2)
    log.close()
    log.close()
    assert_same(read_csv(tmp_path / "a.csv")[1], expected_rows(tb.history))


@pytest.mark.parametrize("source", ["record", "last_report"])
def test_layers_csv_holds_each_refreshs_report(tmp_path, source):
    tb = make_tb(unit="block")
    reports = []
    if source == "last_report":  # records without per-layer alphas: the newest report is used when polled
        for rec in tb.history:
            rec.pop("alphas", None)
    log = TrainingLog(tb if source == "record" else PollOnly(tb), layers_csv=tmp_path / "layers.csv")
    reports.append(copy.deepcopy(tb.last_report))
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn(8, 16, generator=g)
        tb.optimizer.zero_grad()
        tb.model(x).pow(2).mean().backward()
        tb.optimizer.step()
        tb.step()
        if tb.step_count % 2 == 0:
            reports.append(copy.deepcopy(tb.last_report))
            if source == "last_report":
                tb.history[-1].pop("alphas", None)
        log.poll()
    log.close()
    header, rows = read_csv(tmp_path / "layers.csv")
    assert header == list(LAYER_CSV_COLUMNS)
    assert len(reports) == len(tb.history) == 3
    want = [(rec["step"], r.name, r.unit, r.alpha) for rec, rep in zip(tb.history, reports) for r in rep.rows]
    assert [(int(r["step"]), r["layer"], r["unit"], float(r["alpha"])) for r in rows] == want
    assert log.layer_rows and all(r["unit"] for r in log.layer_rows)


class FakeWriter:
    def __init__(self):
        self.scalars, self.histograms, self.flushed = [], [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag, values, step):
        self.histograms.append((tag, list(values), step))

    def flush(self):
        self.flushed += 1


def test_tensorboard_scalars_from_a_given_writer():
    tb = make_tb()
    w = FakeWriter()
    log = TrainingLog(tb, tensorboard=w, tag="tb")
    train(tb, 2, log)
    log.close()
    assert w.flushed == 1  # a writer we did not open is flushed, not closed
    for rec in tb.history:
        step = rec["step"]
        got = {tag: v for tag, v, s in w.scalars if s == step}
        assert got["tb/alpha_std"] == rec["alpha_std"]
        for u in rec["factors"]:
            assert got[f"tb/alpha/{u}"] == rec["unit_values"][u] and got[f"tb/factor/{u}"] == rec["factors"][u]
    hist = {s: v for tag, v, s in w.histograms}
    assert sorted(hist[2]) == sorted(a for a in tb.alphas.values() if math.isfinite(a))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_dir_without_the_package_is_a_clear_error(tmp_path):
    tb = make_tb()
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TrainingLog(tb, tensorboard=tmp_path / "runs", csv=tmp_path / "x.csv")


def test_callback_once_per_refresh_and_include_existing():
    tb = make_tb()
    seen = []
    log = TrainingLog(tb, callback=seen.append, include_existing=False)
    train(tb, 5, log)
    assert [r["step"] for r in seen] == [2, 4]
    assert seen[0] is tb.history[1]
    with pytest.raises(TypeError, match="callback"):
        TrainingLog(tb, callback=3)
    with pytest.raises(TypeError, match="TempBalance"):
        TrainingLog(object())


def test_resume_appends_without_duplicates(tmp_path):
    tb = make_tb()
    path = tmp_path / "run.csv"
    log = TrainingLog(tb, csv=path)
    train(tb, 4, log)
    log.close()
    state = copy.deepcopy(tb.state_dict())
    tb2 = make_tb()  # a new process: build, load, then continue the same CSV
    tb2.load_state_dict(state)
    log2 = TrainingLog(tb2, csv=path, append=True, include_existing=False)
    train(tb2, 3, log2)
    log2.close()
    header, rows = read_csv(path)
    assert header == list(CSV_COLUMNS)
    assert_same(rows, expected_rows(tb2.history))
    assert [int(r["step"]) for r in rows[::3]] == [0, 2, 4, 6]


def test_history_replaced_under_a_live_log_is_not_logged_twice(tmp_path):
    tb = make_tb()
    log = TrainingLog(tb)
    train(tb, 4, log)
    tb.load_state_dict(copy.deepcopy(tb.state_dict()))  # a new history list with the same records
    train(tb, 2, log)
    assert [r["step"] for r in log.rows[::3]] == [0, 2, 4, 6]


def test_registers_with_a_scheduler_hook_when_there_is_one():
    class HookedTB:
        def __init__(self):
            self.history = [dict(step=0, epoch=0, seconds=0.1, unit_values={"a": 2.0}, factors={"a": 1.0},
                                 alpha_std=0.0, failed=[])]
            self.callbacks = []

        def add_refresh_callback(self, fn):
            self.callbacks.append(fn)

        def refresh(self, step):
            rec = dict(step=step, epoch=0, seconds=0.1, unit_values={"a": 2.5}, factors={"a": 1.2}, alpha_std=0.1,
                       failed=["a"])
            self.history.append(rec)
            for fn in self.callbacks:
                fn(rec)

    tb = HookedTB()
    log = TrainingLog(tb)
    assert tb.callbacks == [log]
    tb.refresh(5)
    log.poll()  # harmless next to the hook
    assert [(r["step"], r["factor"], r["failed"]) for r in log.rows] == [(0, 1.0, False), (5, 1.2, True)]


def test_plot_of_the_run(tmp_path):
    tb = make_tb()
    log = TrainingLog(tb)
    train(tb, 4, log)
    path = log.plot(tmp_path / "run.png")
    assert path.exists() and path.stat().st_size > 10_000


def test_a_closed_log_is_no_longer_called():
    import torch

    from tempbalance.diagnostics import TrainingLog
    from tempbalance.training.scheduler import TempBalance
    from test_scheduler import KW, batches, make_model, train_step

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tb = TempBalance(model, opt, interval=1, **KW)
    log = TrainingLog(tb)
    log.close()
    assert not tb._refresher.callbacks
    train_step(model, opt, batches(1)[0])
    tb.step()
