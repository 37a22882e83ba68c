"""Who analyses which matrix, and how its data reaches that rank: pure functions of metadata every rank shares.

Everything here is computed from :class:`Layout` s (shapes, kinds, shard layouts), which every rank holds
identically, so every rank derives the same :class:`Plan` without talking to the others.

* Cost of a matrix and owners: :mod:`tempbalance.analysis.cost` (flops of its spectral pass; largest first onto
  the least-loaded rank).
* Transport of a sharded matrix (FSDP2): ``"gather"`` its shards on the owner, or ``"gram"`` - when the matrix
  is 2-d, sharded along its larger side, so the Gram of the smaller side is the sum of the shards' Grams
  (row-sharded ``W``: ``W^T W = sum_i W_i^T W_i``) - reduce the shards' Grams onto the owner; whichever sends
  fewer bytes. A full copy on every rank (DDP, a replicated DTensor) needs no transport (``"local"``).
* Rounds: the owners' received bytes per round stay within a budget, so no rank ever holds more than about
  ``chunk_bytes`` of gathered matrices (a model is never gathered whole on one rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..analysis.cost import assign, cost
from ..analysis.spectra import analysis_dtype

# spec kinds whose weight is one plain 2-d matrix (the Gram-reduce path applies to these only)
MATRIX_KINDS = ("linear", "lora", "embedding", "conv1d_hf")
# dtypes a weight travels in; half precisions are upcast (exactly) to float32 before they are sent
WIRE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Layout:
    """What every rank knows about one matrix: ``shape`` (global), ``kind``, ``dtype`` of ``spec.weight()``,
    ``distributed`` (``weight()`` returns a DTensor, so every rank must take part in computing it),
    ``shard_dim`` (the sharded dimension, ``None`` for a full copy on every rank), ``error`` (``weight()``
    raised while planning: the matrix is reported failed and nothing is sent for it)."""

    shape: tuple[int, ...]
    kind: str
    dtype: torch.dtype
    distributed: bool = False
    shard_dim: int | None = None
    error: str = ""

    def __str__(self) -> str:
        where = ("a full copy on every rank" if self.shard_dim is None else f"sharded along dim {self.shard_dim}")
        return (f"{self.kind} {tuple(self.shape)} {str(self.dtype).replace('torch.', '')}, "
                f"{'DTensor ' if self.distributed else ''}{where}")


@dataclass(frozen=True)
class Step:
    """One matrix's place in the plan: its ``owner`` rank, ``method`` ("local" | "gather" | "gram" | "failed"),
    ``cost`` (flops), ``nbytes`` (bytes the group sends for it), ``recv_bytes`` (bytes the owner holds for it
    until its round is analysed)."""

    owner: int
    method: str
    cost: float
    nbytes: int
    recv_bytes: int


@dataclass
class Plan:
    layouts: list[Layout]
    steps: list[Step]
    rounds: list[list[int]]  # spec indices per round, ascending
    world: int
    dtype: torch.dtype | None  # analysis dtype asked for (None: each weight's, spectra.analysis_dtype)
    loads: list[float] = field(default_factory=list)  # cost per rank

    def summary(self) -> dict:
        methods: dict[str, int] = {}
        for s in self.steps:
            methods[s.method] = methods.get(s.method, 0) + 1
        total = sum(self.loads) or 1.0
        return dict(world=self.world, methods=methods, rounds=len(self.rounds),
                    bytes_planned=sum(s.nbytes for s in self.steps), loads=list(self.loads),
                    imbalance=max(self.loads, default=0.0) / (total / self.world))


def wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype a shard travels in (complex as pairs of reals, half precision as float32)."""
    if dtype.is_complex:
        return torch.float64 if dtype == torch.complex128 else torch.float32
    return dtype if dtype in WIRE_DTYPES else torch.float32


def wire_numel(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * (2 if dtype.is_complex else 1)


def chunk_sizes(n: int, world: int) -> list[int]:
    """Rows of a length-``n`` dimension on each rank under ``Shard`` (``torch.chunk`` semantics, as DTensor)."""
    c = -(-n // world) if n else 0
    return [max(0, min(c, n - r * c)) for r in range(world)]


def gram_side(layout: Layout) -> int | None:
    """Size of the Gram that is the sum of the shards' Grams, when that is the Gram of the smaller side."""
    if layout.kind not in MATRIX_KINDS or len(layout.shape) != 2 or layout.shard_dim is None:
        return None
    side = layout.shape[1 - layout.shard_dim]
    return side if side == min(layout.shape) else None


def gather_bytes(layout: Layout, world: int) -> int:
    """Bytes the non-owners send to gather a sharded matrix (shards padded to the largest)."""
    assert layout.shard_dim is not None
    rows = chunk_sizes(layout.shape[layout.shard_dim], world)[0]
    per_row = wire_numel(layout.shape, layout.dtype) // max(1, layout.shape[layout.shard_dim])
    return (world - 1) * rows * per_row * wire_dtype(layout.dtype).itemsize


def gram_bytes(side: int, world: int, dtype: torch.dtype) -> int:
    """Bytes the non-owners send to reduce ``side x side`` Grams (+3 counters) of analysis ``dtype``."""
    return (world - 1) * (side * side + 3) * dtype.itemsize


def step_for(layout: Layout, owner: int, world: int, dtype: torch.dtype | None, conv_mode: str,
             allow_gram: bool = True) -> Step:
    c = cost(layout.shape, layout.kind, conv_mode)
    dtype = analysis_dtype(layout.dtype, dtype)  # the Gram's dtype
    if layout.error:
        return Step(owner, "failed", 0.0, 0, 0)
    if layout.shard_dim is None:
        return Step(owner, "local", c, 0, 0)
    full = wire_numel(layout.shape, layout.dtype) * wire_dtype(layout.dtype).itemsize
    by_gather = gather_bytes(layout, world)
    side = gram_side(layout) if allow_gram else None
    if side is not None and gram_bytes(side, world, dtype) < by_gather:
        return Step(owner, "gram", c, gram_bytes(side, world, dtype), (side * side + 3) * dtype.itemsize)
    return Step(owner, "gather", c, by_gather, full)


def split_rounds(steps: list[Step], world: int, budget: int) -> list[list[int]]:
    """Spec indices in order, cut into rounds in which no owner receives more than ``budget`` bytes (a single
    matrix larger than the budget is a round of its own for its owner)."""
    rounds: list[list[int]] = [[]]
    held = [0] * world
    for k, s in enumerate(steps):
        if s.recv_bytes and held[s.owner] and held[s.owner] + s.recv_bytes > budget:
            rounds.append([])
            held = [0] * world
        rounds[-1].append(k)
        held[s.owner] += s.recv_bytes
    return [r for r in rounds if r]


def make_plan(layouts: list[Layout], world: int, *, dtype: torch.dtype | None, conv_mode: str, budget: int,
              allow_gram: bool = True) -> Plan:
    """The plan every rank derives from the same layouts (module docstring); ``allow_gram=False``: gather only."""
    costs = [0.0 if lay.error else cost(lay.shape, lay.kind, conv_mode) for lay in layouts]
    owners, loads = assign(costs, world)
    steps = [step_for(lay, o, world, dtype, conv_mode, allow_gram) for lay, o in zip(layouts, owners)]
    return Plan(layouts, steps, split_rounds(steps, world, budget), world, dtype, loads)
