"""TempBalance: per-unit factors from the spectra of the weights, over any optimizer and schedule.

What it does, in order: select the matrices (:mod:`~tempbalance.training.selection`) -> refresh (a spectral pass,
run by :mod:`~tempbalance.training.passes`, turned into unit factors by its :mod:`~tempbalance.training.policies`
object and :mod:`~tempbalance.training.commit`) -> apply the factors to the param groups
(:mod:`~tempbalance.training.groups`). This module holds the loop around the optimizer and the order of things:
when a refresh is due (the cadence decides), what a finished pass changes (factors, history, warnings, callbacks),
and the checkpoint's top level. The option classes (:mod:`~tempbalance.training.arguments`), the optimizer step
hook (:mod:`~tempbalance.training.watch`), the GPU-only refresh (:mod:`~tempbalance.training.fused_gpu`) and the
pass shared across ranks (:class:`tempbalance.distributed.Coordinator`) live in their own modules.

How the factors reach the optimizer without ever compounding (SPEC §3): every param group ``i`` has an
un-factored value ``scheduled[i]`` - what the user's schedule says - and a factor ``f[i]`` of its unit; the group
holds ``scheduled[i] * f[i]`` while the optimizer steps. ``step()`` first writes ``scheduled[i]`` back into the
groups, then advances the base scheduler (so chainable schedulers read their own value, and LambdaLR-style ones
that rewrite ``lr`` from ``base_lrs`` are unaffected), records the new ``scheduled[i]`` and writes
``scheduled[i] * f[i]`` again.

Typical use::

    sched = get_linear_schedule_with_warmup(opt, 100, 1000)   # any schedule, built first
    tb = TempBalance(model, opt, base_scheduler=sched, interval=200)
    for batch in loader:
        loss(model, batch).backward(); opt.step(); opt.zero_grad()
        tb.step()                                             # also advances sched

Resume: build model, optimizer, base scheduler and TempBalance as before (the group split is deterministic), then
``optimizer.load_state_dict(...)`` and ``tb.load_state_dict(...)`` (which holds the base scheduler's state).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle

from .. import analysis, distributed
from .._warn import warn
from ..adapters import get_adapter
from ..analysis.report import Report
from . import arguments, checkpoint, presets, selection
from . import compat as _compat
from . import groups as _groups
from .groupset import GroupSet
from .cadence import as_cadence
from .passes import STATE_KEYS as PASS_KEYS, LocalAnalyzer
from .policies import CompatPolicy, MappedPolicy, Policy
from .refresh import Refresher
from .results import STATE_KEYS as RESULT_KEYS
from .watch import StepWatch



class TempBalance(LRScheduler):
    """Layer-wise (block-wise) learning rates from PL_Alpha_Hill, multiplied onto any base schedule.

    It is an LR scheduler in torch's sense (``step()``, ``get_last_lr()``, ``state_dict()``): frameworks that take a
    scheduler take it - HF ``Trainer(optimizers=(opt, tb))``, PyTorch Lightning's
    ``{"optimizer": opt, "lr_scheduler": {"scheduler": tb, "interval": "step"}}``, ``accelerate``'s ``prepare``.
    One optimizer has at most one TempBalance: a second one built on it (a notebook cell run again) takes over from
    the un-factored learning rates, and the first one is detached (its ``step()`` raises); :meth:`close` detaches.

    What a refresh turns into factors is its policy (:mod:`tempbalance.training.policies`): by default the mean
    ``metric`` of each unit through ``mapping``, scaling ``target``; under ``compat`` a reference code's rules.
    Failures of a spectral pass (non-finite weights, ...) leave the affected units at their last factor with one
    warning naming them; all new factors are computed before any group is touched. Misuse that would silently give
    wrong learning rates is an error naming what to do instead.

    Every keyword is checked at construction, before anything changes (:mod:`tempbalance.training.arguments`);
    the arguments follow.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer], *,
                 preset: str | None = None, **kwargs: Any):
        # LRScheduler.__init__ is not called on purpose: it would step and rewrite the groups' lr; the class is a
        # base so that frameworks' scheduler checks (Lightning, accelerate) accept a TempBalance.
        if preset is not None:
            kwargs = presets.get(preset, **kwargs)
        unknown = sorted(set(kwargs) - set(arguments.NAMES))
        if unknown:
            raise TypeError(f"TempBalance got unexpected keyword argument(s) {unknown}"
                            + ("" if preset is not None else "; a preset's choice (ratio=, model=, ...) needs preset="))
        parsed = arguments.parse(kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.optimizers, schedulers = arguments.optimizers_and_schedulers(optimizer, parsed.args.base_scheduler)
        self.model, self.optimizer, self.args = model, self.optimizers[0], parsed.args
        self._configure(parsed, schedulers)
        self._start(schedulers)

    # --- construction -------------------------------------------------------------------------------------------
    def _configure(self, parsed: arguments.Parsed, schedulers: list[Any]) -> None:
        """Everything that can fail before an optimizer is touched: the adapter, the matrices, the options, the
        policies, how passes run."""
        a = parsed.args
        self.adapter = get_adapter(self.model, a.adapter)
        if a.compat and hasattr(self.adapter, "lora_scaling"):
            self.adapter.lora_scaling = False
        self.unit = selection.unit_mode(self.adapter, a.unit)
        self.interval, self.cadence = a.interval, as_cadence(a.interval)
        self.lag, self.stagger, self.normalize = a.lag, a.stagger, a.normalize
        for opt, sched in zip(self.optimizers, schedulers):
            if isinstance(sched, TempBalance):
                raise TypeError("base_scheduler is a TempBalance; pass the LR scheduler it should step")
            _groups.check_base_scheduler(opt, sched)
        several = a.compat in _compat.SCHEMES and _compat.SCHEMES[a.compat].several_optimizers
        if a.compat and len(self.optimizers) > 1 and not several:
            raise ValueError("compat reproduces a reference code that trains with one optimizer; give one")
        coordinator = distributed.Coordinator.maybe(a.process_group)
        if coordinator is not None and a.lag:
            raise ValueError("lag >= 1 (background passes) is not supported under torch.distributed yet; use lag=0")
        if coordinator is not None and a.stagger > 1:
            raise ValueError("stagger >= 2 is not supported under torch.distributed yet (the ranks already share "
                             "each pass); use stagger=1")
        # how a pass is analysed: by this process, or shared by the ranks (the same interface)
        self._analyzer = coordinator if coordinator is not None else LocalAnalyzer()
        min_eigs = getattr(self.adapter, "min_eigs", analysis.DEFAULT_MIN_EIGS) if parsed.min_eigs is None \
            else parsed.min_eigs
        chosen = selection.select(self.model, self.optimizers, self.adapter, unit=a.unit, include=a.include,
                                  exclude=a.exclude, remove_first=a.remove_first, remove_last=a.remove_last,
                                  include_embeddings=a.include_embeddings, compat=a.compat, min_eigs=min_eigs,
                                  normalize=a.normalize)
        self._chosen, self._specs, self.units, self.unit = chosen, chosen.specs, chosen.units, chosen.unit
        plan = chosen.plan
        self.compat = plan.scheme.name if plan is not None else None
        options = first = parsed.analysis.replace(min_eigs=min_eigs, conv_scale=0.5 if a.compat else 1.0)
        if plan is not None:  # a scheme counts the eigenvalues a pass needs its own way
            options = options.replace(min_eigs=plan.analysis_min_eigs(min_eigs, first=False))
            first = first.replace(min_eigs=plan.analysis_min_eigs(min_eigs, first=True))
        policy = dict(metric=a.metric, target=a.target, backend=options.backend)
        self.policies: list[Policy] = a.policies() or [
            CompatPolicy(plan, parsed.mapping, **policy) if plan is not None
            else MappedPolicy(parsed.mapping, normalize=a.normalize, **policy)]
        self.policy = self.policies[0]  # the primary one: factors, unit_alphas, history's factors
        blocks = selection.unit_blocks(chosen, self.adapter)
        for p in self.policies:
            p.bind(chosen.units, blocks, plan)
        self.metric, self.target = self.policy.metric, self.policy.target
        # steps from a pass to its factors: ``lag``, and at least one under a reference whose factors act from the
        # update after the pass (ModelBalancing: the pass at the top of step t, the factors after update t)
        next_update = plan is not None and plan.scheme.factors_act_from == "next_update"
        self._refresher = Refresher(chosen, self.policies, self._analyzer, options, self.cadence, lag=a.lag,
                                    stagger=a.stagger, delay=max(a.lag, 1) if next_update else a.lag)
        self._first_options, self._first_due = first, next_update

    def _start(self, schedulers: list[Any]) -> None:
        """The first pass, then the optimizers' groups (split by unit; a previous TempBalance on one of them is
        released first) with the factors applied, then the optimizer step hook."""
        self.step_count = self.epoch = 0
        self._step_count = 0  # torch's LRScheduler counter; accelerate's wrapper counts accumulation steps in it
        self._refresh_due = False
        self._warned: set[str] = set()
        self._watch: StepWatch | None = None
        r = self._refresher
        if self._first_due:  # the reference's first pass acts from the update after it
            start = time.perf_counter()
            r.passes.add_finished(r.analyze(self._specs, self._first_options), 0, time.perf_counter() - start)
        else:
            r.now(0, 0, options=self._first_options)
        self._groups = r.groups = GroupSet(self.optimizers, self._chosen.owner, [p.target for p in self.policies],
                                           params=self._chosen.params, schedulers=schedulers)
        if self._chosen.plan is not None and self._chosen.plan.scheme.holds_between_passes:
            self._groups.hold()
        self._apply()
        self._watch = StepWatch(self.model, self.optimizers, self._on_optimizer_step)
        if self._specs and (why := r.nothing_tuned(self._groups.units)) is not None:
            warn(f"TempBalance: nothing is tuned: {why}; every group keeps factor 1")

    @property
    def base_scheduler(self) -> Any:
        """The LR scheduler :meth:`step` advances (None: the groups' lr is a constant base); with several optimizers,
        the list of them."""
        schedulers = self._groups.schedulers
        return schedulers[0] if len(schedulers) == 1 else list(schedulers)

    @base_scheduler.setter
    def base_scheduler(self, scheduler: Any) -> None:
        """Attach (or with None, detach) the base scheduler after construction: checked like the argument, and a
        scheduler built after TempBalance - its base LRs are the factored ones - is refused."""
        self._check_attached()
        if isinstance(scheduler, TempBalance):
            raise TypeError("base_scheduler is a TempBalance; pass the LR scheduler it should step")
        if scheduler is not self._groups.schedulers[0]:
            self._groups.attach(scheduler)

    # --- the loop -----------------------------------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> None:
        """Call once after each ``optimizer.step()``: advances the base scheduler (``args`` are passed to it,
        e.g. the metric of ReduceLROnPlateau), re-analyses every ``interval`` calls, applies base lr x factor."""
        self._check_attached()
        self._watch.check_call()
        self._settle()
        self._sync_groups(strict=True)
        self._watch.count_call()
        if not self._watch.hooked:  # the optimizer's step is not seen: now is the earliest look after it
            self._poll_epochs(before_step=True)
        self._run_due()
        try:  # each base scheduler reads and writes its own, un-factored values
            self._groups.step_schedulers(lambda scheduler: scheduler.step(*args, **kwargs))
        except BaseException:
            self._apply()  # the groups never stay un-factored
            raise
        self.step_count += 1
        self._refresher.collect(self.step_count, self.epoch)
        if self.cadence.due_after_step(self.step_count):
            self._start_refresh()
        self._apply()

    def epoch_end(self) -> None:
        """Call at the end of every epoch: counts it, and with a per-epoch cadence (``interval=None``) re-analyses
        before the next optimizer step (``lag=0``) or starts the background pass then. (A LightningModule's epochs
        are followed without it; calling it hands the epoch count back to your loop.)"""
        self._check_attached()
        self._settle()
        self._watch.hand_back_epochs()
        self._end_epoch()

    def _end_epoch(self) -> None:
        self.epoch += 1
        if self.cadence.due_at_epoch_end(self.epoch):
            self._mark_due()

    def _poll_epochs(self, before_step: bool = False) -> None:
        """Count the epochs that ended without ``epoch_end()``: those a framework's loop finished since the last
        look, and - ``before_step``, when the next epoch has begun, so an ``epoch_end()`` after the last step of an
        epoch is not missed - those a cadence that knows the epoch length saw pass (one warning)."""
        for _ in range(self._watch.epochs_ended() if self._watch is not None else 0):
            self._end_epoch()
        if before_step and self.cadence.missed_epoch_end(self.step_count):
            self._warn_once("no_epoch_end", f"TempBalance: {self.step_count} optimizer steps and no epoch_end(): "
                            "the per-epoch cadence counts an epoch every "
                            f"{getattr(self.cadence, 'steps_per_epoch', '?')} steps instead. Call tb.epoch_end() at "
                            "each epoch's end (HF Trainer: callbacks=[TempBalanceCallback(tb)]) to refresh at the "
                            "true epoch ends")
            self.epoch += 1
            self._mark_due()

    def _on_optimizer_step(self, optimizer: Any) -> None:
        """Any torch optimizer is about to step (the watch's hook): if it is ours, count the update, notice ended
        epochs and run a due refresh (compare the groups now: ``optimizer.load_state_dict`` replaces the list)."""
        if self._groups.released is None and any(optimizer.param_groups is o.param_groups for o in self.optimizers):
            self._watch.update()
            self._poll_epochs(before_step=True)
            self._run_due(settle=False)

    def _mark_due(self) -> None:
        """A refresh is due: run it when the next optimizer step starts (the step hook), or now without one."""
        self._refresh_due = True
        if self._watch is None or not self._watch.hooked:
            self._run_due()

    def _run_due(self, settle: bool = True) -> None:
        """Run the refresh that fell due (synchronously or as a background pass) and apply the factors; first
        commit a refresh that ran on the GPU (_settle), unless ``settle=False`` (before an optimizer step: the GPU
        pass and the step stay queued behind each other) and no refresh is due."""
        if self._groups.released is not None:
            return
        self._poll_epochs()
        if settle or self._refresh_due:
            self._settle()
        if self._refresh_due:
            self._refresh_due = False
            self._start_refresh()
            self._apply()

    def _sync_groups(self, strict: bool) -> bool:
        """The groups' bookkeeping brought up to date (:meth:`FactoredGroups.sync`; values set outside are the new
        base, with one warning). Returns whether the groups can be written."""
        changed = self._groups.sync(strict)
        if changed:
            self._warn_once("external", f"TempBalance: the {self.target} of param group(s) {changed[:8]} was changed "
                            "outside TempBalance; taking it as the new base value. Pass your scheduler as "
                            "base_scheduler= so TempBalance steps it.")
        return changed is not None

    def _apply(self) -> None:
        if self._refresher.fused.pending is not None:
            return  # the GPU pass wrote base x its factor into the lr tensors; _settle brings the floats up to date
        if self._groups.released is None and self._sync_groups(strict=False):
            self._write()

    def _write(self) -> None:
        """Every policy writes its knob (``base x factor``, or its transition) into its books."""
        factors = self._refresher.results.factors_by_target()
        for policy in self.policies:
            for book in self._groups.by_target(policy.target):
                policy.write(book, factors[policy.target], self.step_count)

    def _check_attached(self) -> None:
        if self._groups.released is not None:
            raise RuntimeError(f"TempBalance: {self._groups.released}; this object no longer manages the "
                               "optimizer (one optimizer has at most one TempBalance)")

    def _warn_once(self, key: str, message: str, category: type[Warning] = UserWarning) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message, category)

    # --- refreshes ----------------------------------------------------------------------------------------------
    def refresh(self) -> Report:
        """Analyse the weights now, synchronously, and apply the new factors (exceptions propagate; groups are
        untouched then). A pending background pass is dropped: this one is newer."""
        self._check_attached()
        self._refresh_due = False
        self._settle()
        self._refresher.passes.drop()
        report = self._refresh_now()
        self._apply()
        return report

    def _refresh_now(self, fused: bool = False) -> Report | None:
        return self._refresher.now(self.step_count, self.epoch, fused=fused)

    def _settle(self) -> None:
        """Commit a refresh whose factors the GPU already wrote into the lr tensors (fused_gpu) and bring the groups'
        bookkeeping up to date. Runs before anything reads the floats: the next step(), epoch_end(), every accessor,
        state_dict(), close()."""
        if self._refresher.settle(self.step_count, self.epoch) and self._groups.released is None \
                and self._groups.in_sync():
            self._groups.apply(self._refresher.results.factors_by_target())  # what the GPU wrote, now the books' too

    def _start_refresh(self) -> None:
        self._refresher.start(self.step_count, self.epoch)

    def add_refresh_callback(self, fn: Callable[[dict[str, Any]], None]) -> RemovableHandle:
        """Call ``fn(record)`` after every applied refresh with its ``history`` record (step, epoch, seconds,
        blocking_seconds, started_step, unit_values, factors, alpha_std, failed, alphas, analysed: how many
        matrices this pass analysed, stale_drift: the largest alpha change among them since their previous
        analysis). For loggers; an exception in ``fn`` is turned into a warning so training goes on. Returns a
        handle whose ``remove()`` unregisters ``fn``."""
        return self._refresher.add_callback(fn)

    def wait(self) -> None:
        """Start a due refresh, then block until a pending background pass has finished (it is still applied at
        its due step)."""
        self._run_due()
        self._refresher.passes.wait()

    def close(self) -> None:
        """Detach from the optimizer: drop a due or pending pass, stop the background thread, remove the optimizer
        step hook and give the groups back their un-factored learning rates (the base schedule's). Reads
        (``history``, ``factors``, ...) keep working; ``step()`` then raises. Collecting the object does the same."""
        self._settle()
        self._refresh_due = False
        passes = self._refresher.passes
        passes.drop()
        if self._watch is not None:
            self._watch.remove()
        passes.shutdown(wait=True)
        self._groups.release("this TempBalance was closed")

    def __del__(self) -> None:
        watch, book = getattr(self, "_watch", None), getattr(self, "_groups", None)
        runner = getattr(getattr(self, "_refresher", None), "passes", None)
        if watch is not None:
            watch.remove()
        if runner is not None:
            runner.shutdown(wait=False)
        if book is not None:
            try:
                book.release("this TempBalance was collected")
            except Exception:  # noqa: BLE001 - at interpreter exit the optimizer may be gone already
                pass

    # --- read access (each runs a refresh that fell due and has not run yet) ----------------------------------
    def _read(self, name: str) -> Any:
        self._run_due()
        return getattr(self._refresher.results, name)

    alphas = property(lambda self: dict(self._read("alphas")),
                      doc="PL_Alpha_Hill of every analysed matrix at the last refresh (NaN where it could not be fitted).")
    unit_alphas = property(lambda self: dict(self._read("unit_values")),
                           doc="Per unit, the mean ``metric`` (alpha by default) of its matrices that drove the last "
                               "mapping.")
    factors = property(lambda self: dict(self._read("factors")),
                       doc="Current LR (or weight-decay) factor per unit; parameters outside every unit have factor 1.")
    alpha_std = property(lambda self: self._read("alpha_std"),
                         doc="Standard deviation of alpha across the analysed matrices at the last refresh.")
    history = property(lambda self: self._read("history"),
                       doc="One record per applied refresh (see :meth:`add_refresh_callback`), oldest first.")
    last_report = property(lambda self: self._read("last_report"),
                           doc="The :class:`~tempbalance.analysis.report.Report` of the last applied refresh.")
    spectral_seconds = property(lambda self: self._read("spectral_seconds"),
                                doc="Wall seconds of every applied spectral pass so far (background passes included).")
    blocking_seconds = property(lambda self: self._read("blocking_seconds"),
                                doc="Seconds the training loop waited for spectral work (all of it for synchronous "
                                    "passes).")

    @property
    def analysis_options(self) -> dict[str, Any]:
        """How the passes after the first analyse the weights, as a dict to read (a copy of the checked
        :class:`~tempbalance.analysis.options.AnalysisOptions` the scheduler holds)."""
        return dataclasses.asdict(self._refresher.options)

    @property
    def map_options(self) -> dict[str, Any]:
        """How unit values become factors, as a dict to read (the policy's mapping options and backend)."""
        mapping = getattr(self.policy, "mapping", None)
        return dict(dataclasses.asdict(mapping) if mapping is not None else {}, backend=self.policy.backend)

    @property
    def skipped_refreshes(self) -> list[int]:
        """The steps at which a refresh fell due while a background pass was pending, and was skipped."""
        return self._refresher.passes.skipped_refreshes

    @property
    def factors_by_target(self) -> dict[str, dict[str, float]]:
        """Every knob's factor per unit (``{"lr": {...}, "weight_decay": {...}}`` with two policies)."""
        return {t: dict(f) for t, f in self._read("factors_by_target")().items()}

    @property
    def group_units(self) -> list[str | None]:
        """The unit of every param group, optimizer by optimizer (None: not tuned)."""
        return list(self._groups.units)

    def get_last_lr(self) -> list[float]:
        """The learning rate of every param group as the optimizer uses it (base x factor), optimizer by
        optimizer."""
        self._run_due()
        return [_groups.read(g, "lr") for opt in self.optimizers for g in opt.param_groups]

    def get_lr(self) -> list[float]:
        """As :meth:`get_last_lr` (TempBalance computes no closed form of its own)."""
        return self.get_last_lr()

    def get_base_lr(self) -> list[float]:
        """The un-factored learning rate of every group (what the base schedule says), optimizer by optimizer."""
        books = self._groups.by_target("lr")
        if books:
            return [v for book in books for v in book.scheduled]
        return [_groups.read(g, "lr") for opt in self.optimizers for g in opt.param_groups]

    # --- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, the base schedulers' states included (plain Python + tensors,
        loadable with ``torch.load(weights_only=True)``), one part per component (:mod:`~tempbalance.training.
        checkpoint`). A pending background pass is waited for and saved with its due step, so the resumed run applies
        it at the same step; a refresh that fell due and has not run is saved as due and runs before the resumed
        run's first optimizer step."""
        self._settle()
        held = self._groups.books[0].base() if self._groups.held is not None else None
        groups = self._groups.state_parts()
        return dict(version=checkpoint.VERSION, settings=self._settings(),
                    fingerprint=[list(x) for x in self._chosen.fingerprint], groups=groups["groups"],
                    cadence=self.cadence.state_dict(), base_scheduler=groups["base_scheduler"],
                    progress=dict(step_count=self.step_count, epoch=self.epoch, source_epoch=self._watch.source_epoch,
                                  refresh_due=self._refresh_due, held_base=copy.copy(held)),
                    **self._refresher.state_parts(self.step_count, self.stagger > 1))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything changes: a different model, unit
        mode, cadence or param-group layout is a ``ValueError`` saying what differs, and on any error this object,
        its optimizers' groups and its base schedulers are exactly as before. The groups get base x factor as saved.
        (Param groups added to an optimizer since construction are adopted first, as ``step()`` would.)"""
        self._check_attached()
        self._groups.adopt_added()
        self._check_state(state)
        self._groups.load_parts(state)
        self.cadence.load_state_dict(state["cadence"])
        progress = state["progress"]
        self.step_count, self.epoch = int(progress["step_count"]), int(progress["epoch"])
        source = progress.get("source_epoch")
        self._watch.restore(None if source is None else int(source))
        self._refresher.load_parts(state, self.step_count)
        self._refresh_due = bool(progress["refresh_due"])
        if self._groups.held is not None:
            self._groups.held = [float(v) for v in progress["held_base"]]
        self._write()  # as saved: the groups' values now (a loaded optimizer's) are not a base

    def _check_state(self, state: Any) -> None:
        """Every check of :meth:`load_state_dict`, before it changes anything: the layout, then the settings (a
        setting that differs explains the rest), then each component's own parts."""
        checkpoint.check_layout(state, {"settings": (), "fingerprint": None, "groups": None, "cadence": (),
                                        "base_scheduler": None, "progress": checkpoint.PROGRESS_KEYS,
                                        "passes": PASS_KEYS, "results": RESULT_KEYS})
        checkpoint.check_settings(state["settings"], self._settings(), {"targets": [p.target for p in self.policies]})
        try:
            selection.check_fingerprint(self._chosen.fingerprint, state["fingerprint"])
            self._groups.check_parts(state)
            self.cadence.check_state(state["cadence"])
            self._refresher.check_parts(state)
        except ValueError as e:
            raise ValueError(f"{checkpoint.PREFIX}{e}") from None
        if self._groups.held is not None:
            checkpoint.check_held(state["progress"].get("held_base"), len(self._groups.units))

    def _settings(self) -> dict[str, Any]:
        """What a checkpoint must have been saved with (checked on load)."""
        settings = dict(unit=self.unit, metric=self.metric, target=self.target, lag=self.lag, stagger=self.stagger,
                        compat=self.compat, normalize=self.normalize)
        if len(self.policies) > 1:  # added with several knobs; a state without it had one
            settings["targets"] = [p.target for p in self.policies]
        return settings

    def __repr__(self) -> str:
        return (f"TempBalance(adapter={getattr(self.adapter, 'name', type(self.adapter).__name__)}, unit={self.unit}, "
                f"units={len(self.units)}, matrices={len(self._specs)}, policy={self.policy.describe()}, "
                f"interval={self.interval}, step={self.step_count})")


TempBalance.__init__.__signature__ = arguments.signature()  # type: ignore[attr-defined]
TempBalance.__doc__ += "\n".join("    " + line if line else line for line in arguments.DOC.splitlines())
