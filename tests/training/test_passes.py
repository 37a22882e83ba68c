"""The pass mechanism on its own (tempbalance/training/passes.py): stagger slices, delayed and background passes, skipped
refreshes, collecting / dropping / waiting, and the runner's checkpoint part - without a TempBalance.

Oracles: a background pass on a snapshot equals the synchronous analysis (tempbalance.analyze_specs) of a copy of
the weights taken when it started; the slices are checked against the definition of longest-processing-time-first
(and the bound it guarantees); the runner's state goes through torch.save / torch.load(weights_only=True).
"""
from __future__ import annotations

import io
import itertools
import threading

import numpy as np
import pytest
import torch

from tempbalance import analysis
from tempbalance.training import passes
from tempbalance.adapters import MatrixSpec
from tempbalance.distributed import partition
from tempbalance.analysis.report import Report

OPTIONS = dict(min_eigs=4, backend="torch")
SHAPES = [(48, 16), (48, 48), (24, 48), (3, 24)]


def make_specs(seed: int = 0) -> tuple[list[MatrixSpec], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(*shape, generator=g) for shape in SHAPES]
    specs = [MatrixSpec(f"m{i}", "linear", (lambda w=w: w), f"m{i}") for i, w in enumerate(weights)]
    return specs, weights


class Analyze:
    """The analysis a TempBalance would hand over: records the thread and the weights of every call."""

    def __init__(self, gate: threading.Event | None = None, error: Exception | None = None):
        self.calls: list[tuple[str, list[torch.Tensor]]] = []
        self.gate, self.error = gate, error

    def __call__(self, specs: list[MatrixSpec]) -> Report:
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        self.calls.append((threading.current_thread().name, [s.weight().clone() for s in specs]))
        if self.error is not None:
            raise self.error
        return analysis.analyze_specs(specs, **OPTIONS)


def assert_same_rows(got: Report, want: Report) -> None:
    """The same rows, NaN (a matrix that cannot be fitted) equal to NaN."""
    assert [r.name for r in got.rows] == [r.name for r in want.rows]
    for g, w in zip(got.rows, want.rows):
        assert g.status == w.status
        np.testing.assert_array_equal([g.alpha, g.xmin, g.spectral_norm], [w.alpha, w.xmin, w.spectral_norm])


# --- slices -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_slices_partition_the_matrices_in_order_and_balance_cost_as_lpt_guarantees(k):
    costs = [7.0, 1.0, 3.0, 3.0, 9.0, 0.5, 2.0]
    slices = passes.stagger_slices(costs, k)
    assert len(slices) == k
    assert sorted(itertools.chain(*slices)) == list(range(len(costs)))
    assert all(s == sorted(s) for s in slices)
    loads = [sum(costs[i] for i in s) for s in slices]
    # longest processing time first: the last matrix put on the fullest slice went to the emptiest slice then, so
    # the fullest exceeds the emptiest by at most the largest cost
    assert max(loads) - min(loads) <= max(costs)


def test_slices_follow_largest_first_onto_the_cheapest_slice():
    costs = [7.0, 1.0, 3.0, 3.0, 9.0, 0.5, 2.0]
    # by hand, largest first (ties: lower index), each onto the cheaper slice (ties: the first): 4 -> A (9),
    # 0 -> B (7), 2 -> B (10), 3 -> A (12), 6 -> B (12), 1 -> A (13), 5 -> B (12.5)
    assert passes.stagger_slices(costs, 2) == [[1, 3, 4], [0, 2, 5, 6]]
    assert passes.stagger_slices([1.0, 1.0, 1.0, 1.0], 2) == [[0, 2], [1, 3]]


def test_runner_costs_its_slices_by_the_spectral_flops_of_each_shape():
    specs, _ = make_specs()
    runner = passes.PassRunner(specs, SHAPES, stagger=2)
    costs = [partition.cost(shape, "linear") for shape in SHAPES]
    assert costs[1] > costs[0] + costs[2] + costs[3]  # the 48 x 48 alone outweighs the rest
    assert runner.slices == [[1], [0, 2, 3]]
    assert [runner.take_slice() for _ in range(5)] == [[1], [0, 2, 3], [1], [0, 2, 3], [1]]
    assert runner.next_slice == 5
    assert passes.PassRunner(specs, SHAPES).slices == [[0, 1, 2, 3]]


# --- delayed passes -----------------------------------------------------------------------------------------------
def test_a_delayed_pass_on_live_weights_runs_at_start_and_is_due_delay_steps_on():
    specs, _ = make_specs()
    analyze = Analyze()
    runner = passes.PassRunner(specs, SHAPES, lag=0, delay=2)
    runner.start(3, analyze)
    assert len(analyze.calls) == 1 and analyze.calls[0][0] == threading.current_thread().name
    p = runner.pending
    assert (p.started_step, p.due_step, p.indices) == (3, 5, [0, 1, 2, 3])
    assert runner.take_due(4) is None and runner.pending is p
    due = runner.take_due(5)
    assert due is p and runner.pending is None
    assert_same_rows(due.report(), analysis.analyze_specs(specs, **OPTIONS))


def test_a_refresh_while_a_pass_is_pending_is_skipped_and_recorded():
    specs, _ = make_specs()
    analyze = Analyze()
    runner = passes.PassRunner(specs, SHAPES, lag=0, delay=3, stagger=2)
    runner.start(2, analyze)
    runner.start(4, analyze)  # the pass of step 2 is due at 5: still pending
    assert runner.skipped_refreshes == [4] and len(analyze.calls) == 1
    assert runner.next_slice == 1  # a skipped refresh takes no slice
    runner.take_due(5)
    runner.start(6, analyze)
    assert runner.pending.indices == [0, 2, 3] and runner.skipped_refreshes == [4]


def test_a_background_pass_analyses_a_snapshot_while_the_weights_change():
    specs, weights = make_specs()
    before = [w.clone() for w in weights]
    gate = threading.Event()
    analyze = Analyze(gate)
    runner = passes.PassRunner(specs, SHAPES, lag=1, delay=1)
    try:
        runner.start(1, analyze)  # returns while the analysis waits at the gate
        assert analyze.calls == [] and runner.pending.due_step == 2
        with torch.no_grad():
            for w in weights:
                w.mul_(-3.0).add_(1.0)  # training goes on
        gate.set()
        runner.wait()
        assert runner.pending.future.done()
        thread, seen = analyze.calls[0]
        assert thread.startswith("tempbalance")
        assert all(torch.equal(s, b) for s, b in zip(seen, before))
        want = analysis.analyze_specs([MatrixSpec(s.name, s.kind, (lambda b=b: b), s.unit)
                                       for s, b in zip(specs, before)], **OPTIONS)
        assert_same_rows(runner.take_due(2).report(), want)
    finally:
        gate.set()
        runner.shutdown()


def test_a_weight_that_cannot_be_read_fails_in_the_pass_with_its_error():
    specs, _ = make_specs()

    def broken():
        raise RuntimeError("layer m2 is gone")
    specs[2] = MatrixSpec("m2", "linear", broken, "m2")
    seen: list[Exception] = []

    def analyze(copies):
        try:
            copies[2].weight()
        except RuntimeError as e:
            seen.append(e)
        return analysis.analyze_specs(copies, **OPTIONS)

    runner = passes.PassRunner(specs, SHAPES, lag=2, delay=2)
    runner.start(0, analyze)
    report = runner.take_due(2).report()
    runner.shutdown()
    assert [str(e) for e in seen] == ["layer m2 is gone"]
    assert report.rows[2].status == "error" and "layer m2 is gone" in report.rows[2].reason
    assert [r.ok for i, r in enumerate(report.rows) if i != 2] == [True, True, False]  # m3: 3 eigenvalues


def test_an_analysis_that_raises_propagates_from_start_and_leaves_nothing_pending():
    specs, _ = make_specs()
    runner = passes.PassRunner(specs, SHAPES, lag=0, delay=1, stagger=2)
    with pytest.raises(ValueError, match="bad pass"):
        runner.start(1, Analyze(error=ValueError("bad pass")))
    assert runner.pending is None and runner.next_slice == 1 and runner.skipped_refreshes == []


def test_a_background_pass_that_fails_raises_when_collected():
    specs, _ = make_specs()
    runner = passes.PassRunner(specs, SHAPES, lag=1, delay=1)
    runner.start(1, Analyze(error=ValueError("bad pass")))
    due = runner.take_due(2)
    runner.shutdown()
    with pytest.raises(ValueError, match="bad pass"):
        due.report()


def test_a_finished_pass_is_held_until_its_due_step_and_drop_forgets_it():
    specs, _ = make_specs()
    report = analysis.analyze_specs(specs, **OPTIONS)
    runner = passes.PassRunner(specs, SHAPES, lag=0, delay=1)
    runner.add_finished(report, 0, 0.25)
    p = runner.pending
    assert (p.started_step, p.due_step, p.indices, p.snapshot_seconds) == (0, 1, [0, 1, 2, 3], 0.25)
    assert p.report() is report
    runner.drop()
    assert runner.pending is None and runner.take_due(1) is None
    runner.drop()  # nothing pending: nothing to do
    runner.wait()


@pytest.mark.parametrize("lag, delay, stagger, match", [(-1, 0, 1, "lag"), (2, 1, 1, "delay must be an integer >= 2"),
                                                        (0, 0, 0, "stagger"), (True, 1, 1, "lag")])
def test_arguments_are_checked(lag, delay, stagger, match):
    specs, _ = make_specs()
    with pytest.raises(ValueError, match=match):
        passes.PassRunner(specs, SHAPES, lag=lag, delay=delay, stagger=stagger)
    with pytest.raises(ValueError, match="3 shapes for 4 matrices"):
        passes.PassRunner(specs, SHAPES[:3])


# --- its checkpoint part ------------------------------------------------------------------------------------------
def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_holds_the_pending_pass_the_slice_position_and_the_skipped_refreshes():
    specs, weights = make_specs()
    runner = passes.PassRunner(specs, SHAPES, lag=1, delay=3, stagger=2)
    runner.start(2, Analyze())
    runner.start(4, Analyze())
    state = roundtrip(runner.state_dict(on_failure=pytest.fail))
    runner.shutdown()
    assert list(state) == list(passes.STATE_KEYS)
    assert state["next_slice"] == 1 and state["skipped_refreshes"] == [4]
    pending = state["pending"]
    assert (pending["started_step"], pending["due_step"], pending["indices"]) == (2, 5, [1])
    assert pending["report"] == runner.pending.report().state_dict()

    other_specs, _ = make_specs(seed=1)  # other weights: the loaded pass is the saved one, not a new analysis
    resumed = passes.PassRunner(other_specs, SHAPES, lag=1, delay=3, stagger=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict(on_failure=pytest.fail) == state
    assert resumed.take_due(4) is None
    due = resumed.take_due(5)
    assert (due.started_step, due.indices, due.snapshot_seconds) == (2, [1], 0.0)
    assert_same_rows(due.report(), runner.pending.report())
    assert resumed.take_slice() == [0, 2, 3]


def test_a_pending_pass_that_failed_is_not_saved_and_is_reported():
    specs, _ = make_specs()
    runner = passes.PassRunner(specs, SHAPES, lag=1, delay=2)
    runner.start(1, Analyze(error=RuntimeError("lost")))
    failures: list[BaseException] = []
    state = runner.state_dict(on_failure=failures.append)
    runner.shutdown()
    assert state["pending"] is None and runner.pending is None
    assert [str(e) for e in failures] == ["lost"]


def test_loading_replaces_a_pending_pass_and_loading_none_clears_it():
    specs, _ = make_specs()
    runner = passes.PassRunner(specs, SHAPES, lag=0, delay=1)
    runner.start(1, Analyze())
    runner.load_state_dict(dict(pending=None, next_slice=3, skipped_refreshes=[7]))
    assert runner.pending is None and runner.next_slice == 3 and runner.skipped_refreshes == [7]


@pytest.mark.parametrize("state, match", [
    (None, "lacks"), ({"pending": None, "next_slice": 0}, "lacks"),
    ({"pending": {"started_step": 1, "due_step": 2}, "next_slice": 0, "skipped_refreshes": []}, "incomplete"),
    ({"pending": [1, 2], "next_slice": 0, "skipped_refreshes": []}, "incomplete"),
])
def test_a_bad_state_is_refused_before_anything_changes(state, match):
    specs, _ = make_specs()
    runner = passes.PassRunner(specs, SHAPES, lag=0, delay=1, stagger=2)
    runner.start(1, Analyze())
    before = runner.state_dict(on_failure=pytest.fail)
    with pytest.raises(ValueError, match=match):
        runner.load_state_dict(state)
    assert runner.state_dict(on_failure=pytest.fail) == before


def test_a_report_survives_its_state_dict():
    specs, _ = make_specs()
    report = analysis.analyze_specs(specs, **OPTIONS)
    assert not report.rows[3].ok  # a NaN row too
    back = Report.from_state_dict(roundtrip(report.state_dict()))
    assert_same_rows(back, report)
    assert [r.shape for r in back.rows] == [r.shape for r in report.rows] == SHAPES
    assert back.seconds == report.seconds and back.settings == report.settings
