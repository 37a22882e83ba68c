"""Every optimizer and every knob of one TempBalance: one :class:`~tempbalance.training.groups.FactoredGroups` per
(optimizer, target), and the base scheduler of each optimizer.

A TempBalance may drive several optimizers (Muon for the hidden matrices and AdamW for the rest) and several
knobs (the learning rate and the weight decay) from one spectral pass. :class:`GroupSet` does for all of them what
a FactoredGroups does for one: bring the bookkeeping up to date, step each optimizer's base scheduler on the
un-factored values, write ``base x factor`` of every knob, hold a reference's base rates, release, and save its
part of the checkpoint - one book's state as it always was, a list of them when there are several.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from .groups import FactoredGroups, check_base_scheduler, check_groups, owners_of, read, schedulers_in, write


class GroupSet:
    """The books of ``optimizers`` x ``targets`` (optimizer-major), split by ``owner`` (``id(param) -> unit``).

    ``schedulers[i]``: the base scheduler of optimizer ``i`` (None: its values are a constant base). The first
    book of each optimizer is the one its scheduler's per-group lists are remapped for; a TempBalance built on any
    of these optimizers before is released first (one optimizer has at most one TempBalance).
    """

    def __init__(self, optimizers: Sequence[Any], owner: Mapping[int, str], targets: Sequence[str], *,
                 params: Sequence[torch.Tensor], schedulers: Sequence[Any]):
        for opt in optimizers:  # every book's groups are checked before any optimizer changes
            for target in targets:
                check_groups(opt.param_groups, target)
        self.optimizers, self.targets, self.schedulers = list(optimizers), list(targets), list(schedulers)
        for opt in self.optimizers:  # a TempBalance on any of these optimizers gives all of its groups back
            for book in owners_of(opt):
                holder = book.token if isinstance(book.token, GroupSet) else book
                holder.release("a newer TempBalance was built on the same optimizer and took over its param groups "
                              "from the un-factored learning rates")
        self.books: list[FactoredGroups] = []
        for i, opt in enumerate(self.optimizers):
            for k, target in enumerate(self.targets):
                self.books.append(FactoredGroups(opt, owner, target=target, params=params, token=self,
                                                 scheduler=self.schedulers[i] if k == 0 else None))

    def of(self, optimizer_index: int) -> list[FactoredGroups]:
        """The books of one optimizer (one per target)."""
        n = len(self.targets)
        return self.books[optimizer_index * n:(optimizer_index + 1) * n]

    def by_target(self, target: str) -> list[FactoredGroups]:
        """The books of one knob (one per optimizer)."""
        return [b for b in self.books if b.target == target]

    @property
    def released(self) -> str | None:
        """Why the groups are no longer this TempBalance's (any book released), or None."""
        return next((b.released for b in self.books if b.released is not None), None)

    @property
    def units(self) -> list[str | None]:
        """The unit of every param group, optimizer by optimizer."""
        return [u for i in range(len(self.optimizers)) for u in self.of(i)[0].units]

    @property
    def held(self) -> list[float] | None:
        """The base values a reference holds between passes (the first book's: compat has one), or None."""
        return self.books[0].held

    @held.setter
    def held(self, values: list[float]) -> None:
        self.books[0].held = values

    def adopt_added(self) -> None:
        """Take over the groups appended to any optimizer since (:meth:`FactoredGroups.adopt_added`)."""
        for i in range(len(self.optimizers)):
            for book in self.of(i):
                book.adopt_added(self.schedulers[i])

    def in_sync(self) -> bool:
        return all(b.in_sync() for b in self.books)

    def sync(self, strict: bool) -> list[Any] | None:
        """Every book's :meth:`FactoredGroups.sync`: None when a non-strict sync cannot write the groups; else the
        param groups whose value was set outside (their indices; ``"optimizer 1 lr of group 3"``... with several
        books)."""
        changed: list[Any] = []
        for i, opt_books in enumerate(self.of(i) for i in range(len(self.optimizers))):
            for book in opt_books:
                got = book.sync(self.schedulers[i], strict)
                if got is None:
                    return None
                where = f"optimizer {i} " if len(self.optimizers) > 1 else ""
                changed += got if len(self.books) == 1 else [f"{where}{book.target} of group {g}" for g in got]
        return changed

    def step_schedulers(self, step: Callable[[Any], None]) -> None:
        """``step(scheduler)`` for every optimizer's base scheduler, on the un-factored values: they are written into
        the groups first and read back after (so chainable schedulers read their own values). An error leaves the
        groups un-factored: the caller writes the factors again."""
        for i, scheduler in enumerate(self.schedulers):
            if scheduler is None:
                continue
            books = self.of(i)
            for book in books:
                book.restore_base()
            step(scheduler)
            for book in books:
                book.capture_base()

    def apply(self, factors: Mapping[str, Mapping[str, float]]) -> None:
        """Write ``base x factor`` into every book (``factors[target][unit]``)."""
        for book in self.books:
            book.apply(factors[book.target])

    def hold(self) -> None:
        for book in self.books:
            book.hold()

    def release(self, reason: str) -> None:
        for book in self.books:
            book.release(reason)

    def attach(self, scheduler: Any) -> None:
        """Take ``scheduler`` as the one optimizer's base scheduler after construction (or detach it with None):
        checked like the argument (:meth:`FactoredGroups.attach_scheduler` refuses one built on the factored
        values)."""
        if len(self.optimizers) > 1:
            raise ValueError("with several optimizers, give the base schedulers when TempBalance is built")
        if scheduler is not None:
            check_base_scheduler(self.optimizers[0], scheduler)
            for book in self.books:
                book.attach_scheduler(scheduler)
        self.schedulers[0] = scheduler

    def scheduled_after(self, book: FactoredGroups, steps: int) -> list[float]:
        """The un-factored values ``book``'s base scheduler will have given its groups ``steps`` steps from now (its
        groups' values now when it has no scheduler), read off a copy of the scheduler stepped on a copy of the
        optimizer's groups: the parameters and the optimizer's state are shared, never copied."""
        if steps <= 0 or self.schedulers[self.index_of(book)] is None:
            return list(book.base())
        return self.twin(book).advance(steps)

    def twin(self, book: FactoredGroups, state: Any = None, values: Sequence[float] | None = None) -> "ScheduleTwin":
        """A copy of ``book``'s base scheduler on a copy of its optimizer's groups (parameters and optimizer state
        shared), as it is now - or as it was: ``state`` (the scheduler's ``state_dict()`` then) with the groups'
        un-factored ``values`` then. Without a scheduler the values stay as they are."""
        return ScheduleTwin(self.schedulers[self.index_of(book)], book, state, values)

    def index_of(self, book: FactoredGroups) -> int:
        """The index of the optimizer whose groups ``book`` holds."""
        return next(k for k in range(len(self.optimizers)) if book in self.of(k))
    # --- checkpointing --------------------------------------------------------------------------------------------
    def state_dict(self) -> Any:
        """One book's state as it always was; a list of them, optimizer-major, when there are several."""
        states = [b.state_dict() for b in self.books]
        return states[0] if len(states) == 1 else states

    def check_state(self, state: Any) -> None:
        states = [state] if len(self.books) == 1 else state
        if not isinstance(states, list) or len(states) != len(self.books):
            raise ValueError(f"param groups: the saved state has {len(states) if isinstance(states, list) else 1} "
                             f"part(s), this object drives {len(self.books)} (optimizer, knob) pairs")
        for book, part in zip(self.books, states):
            book.check_state(part)

    def load_state_dict(self, state: Any) -> None:
        self.check_state(state)
        for book, part in zip(self.books, [state] if len(self.books) == 1 else state):
            book.load_state_dict(part)

    def state_parts(self) -> dict[str, Any]:
        """The checkpoint parts ``groups`` and ``base_scheduler``: one optimizer's as they always were (the
        scheduler's state or None), lists optimizer by optimizer when there are several."""
        schedulers = [s.state_dict() if s is not None else None for s in self.schedulers]
        return dict(groups=self.state_dict(), base_scheduler=schedulers[0] if len(schedulers) == 1 else schedulers)

    def check_parts(self, state: dict[str, Any]) -> None:
        """``ValueError`` saying what does not fit: the groups, then the schedulers (saved with or without one,
        another count)."""
        self.check_state(state["groups"])
        saved = state["base_scheduler"]
        saved = [saved] if len(self.schedulers) == 1 else saved
        if not isinstance(saved, list) or len(saved) != len(self.schedulers):
            raise ValueError(f"the base schedulers were saved for {len(saved) if isinstance(saved, list) else 1} "
                             f"optimizer(s), this object has {len(self.schedulers)}")
        for i, (s, part) in enumerate(zip(self.schedulers, saved)):
            if (part is None) != (s is None):
                which = "" if len(self.schedulers) == 1 else f" of optimizer {i}"
                raise ValueError(f"saved {'without' if part is None else 'with'} a base_scheduler{which}, this object "
                                 f"has {'none' if s is None else 'one'}")

    def load_parts(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_parts` (the schedulers all or nothing: on an error every one is as before)."""
        saved = [state["base_scheduler"]] if len(self.schedulers) == 1 else state["base_scheduler"]
        before = [copy.deepcopy(s.state_dict()) if s is not None else None for s in self.schedulers]
        try:
            for s, part in zip(self.schedulers, saved):
                if s is not None:
                    s.load_state_dict(part)
        except BaseException:
            for s, part in zip(self.schedulers, before):
                if s is not None:
                    s.load_state_dict(part)
            raise
        self.load_state_dict(state["groups"])


class ScheduleTwin:
    """A base scheduler's copy that steps on copies of the groups: where the schedule goes without touching the
    optimizer (:meth:`GroupSet.twin`)."""

    def __init__(self, scheduler: Any, book: FactoredGroups, state: Any = None,
                 values: Sequence[float] | None = None):
        self.target = book.target
        values = list(book.scheduled if values is None else values)
        if scheduler is None:
            self.scheduler, self._values = None, values
            return
        memo: dict[int, Any] = {id(p): p for g in book.groups for p in g["params"]}
        for sub in schedulers_in(scheduler):
            opt = getattr(sub, "optimizer", None)
            if opt is not None:
                memo[id(opt.state)] = opt.state
        self.scheduler = copy.deepcopy(scheduler, memo)
        if state is not None:
            self.scheduler.load_state_dict(copy.deepcopy(state))
        self.groups = next(s.optimizer for s in schedulers_in(self.scheduler)
                           if getattr(s, "optimizer", None)).param_groups
        for g, v in zip(self.groups, values):
            write(g, self.target, v)

    def advance(self, steps: int = 1) -> list[float]:
        """Step the copy ``steps`` times; the groups' values then."""
        if self.scheduler is None:
            return list(self._values)
        with warnings.catch_warnings():  # the copied optimizer's step was never called: torch's order warning
            warnings.filterwarnings("ignore", message=".*optimizer.step()", category=UserWarning)
            for _ in range(steps):
                self.scheduler.step()
        return [read(g, self.target) for g in self.groups]
