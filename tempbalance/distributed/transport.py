"""Reading a matrix's layout and moving its data to the owner rank: gather the shards, or reduce their Grams.

Every collective here is entered by every rank of the group with a buffer of the planned shape, whatever happened
locally: a rank whose ``weight()`` raised sends NaN and reports the failure afterwards (so no rank is ever left
waiting in a collective).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist

from .partition import Layout, chunk_sizes, gram_side, wire_dtype


class LayoutError(ValueError):
    """A DTensor layout TempBalance does not handle: a 2-d mesh (HSDP), a strided shard (FSDP over tensor
    parallelism), a Partial placement, or a mesh over other ranks than the process group."""


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without DTensor: no FSDP2 either
        return None
    return DTensor


def is_dtensor(t: Any) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def describe(name: str, w: torch.Tensor, kind: str, group_ranks: list[int]) -> Layout:
    """The :class:`Layout` of ``w`` (what ``spec.weight()`` returned); raises :class:`LayoutError` naming the
    layer for DTensor layouts other than a full copy or one ``Shard`` on a 1-d mesh over the group's ranks."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"layer '{name}': weight() returned {type(w).__name__}, not a tensor")
    shape = tuple(int(x) for x in w.shape)
    if not is_dtensor(w):
        return Layout(shape, kind, w.dtype)
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = w.device_mesh, tuple(w.placements)
    mesh_ranks = [int(r) for r in mesh.mesh.flatten().tolist()]
    if mesh.ndim != 1:
        raise LayoutError(
            f"layer '{name}': DTensor on a {mesh.ndim}-d device mesh (placements {placements}) is not supported; "
            "TempBalance handles FSDP2 on a 1-d mesh (fully_shard(model, mesh=<1-d mesh>)) and DDP - for HSDP or "
            "tensor parallelism, gather the weights yourself and use tempbalance.analyze")
    if mesh_ranks != group_ranks:
        raise LayoutError(
            f"layer '{name}': its DTensor mesh spans ranks {mesh_ranks}, TempBalance's process group spans "
            f"{group_ranks}; pass process_group= the group of the FSDP mesh (mesh.get_group())")
    (p,) = placements
    if isinstance(p, Replicate):
        return Layout(shape, kind, w.dtype, distributed=True)
    if type(p) is Shard:  # not _StridedShard (FSDP2 over tensor parallelism)
        return Layout(shape, kind, w.dtype, distributed=True, shard_dim=p.dim % len(shape))
    raise LayoutError(f"layer '{name}': DTensor placement {p} is not supported (only Shard(dim) and Replicate); "
                      "a Partial weight is not a weight yet")


def local_part(name: str, w: torch.Tensor, layout: Layout, rank: int, world: int) -> torch.Tensor:
    """This rank's part of ``w`` (the whole tensor for a full copy), checked against the planned layout."""
    shard_dim = None
    if is_dtensor(w) and len(w.placements) == 1 and w.placements[0].is_shard():
        shard_dim = w.placements[0].dim % w.ndim
    if tuple(w.shape) != layout.shape or is_dtensor(w) != layout.distributed or shard_dim != layout.shard_dim:
        raise RuntimeError(f"layer '{name}': its layout changed since the plan (shape {tuple(w.shape)}, sharded "
                           f"along {shard_dim}; planned {layout.shape} along {layout.shard_dim}); the next pass "
                           "re-plans")
    local = w.to_local() if is_dtensor(w) else w
    if shard_dim is not None:
        want = chunk_sizes(layout.shape[shard_dim], world)[rank]
        if local.shape[shard_dim] != want:
            raise RuntimeError(f"layer '{name}': rank {rank} holds {local.shape[shard_dim]} of dim {shard_dim}, "
                               f"expected {want} (uneven sharding other than torch.chunk's)")
    return local.detach()


def _to_wire(t: torch.Tensor) -> torch.Tensor:
    if t.is_complex():
        return torch.view_as_real(t.resolve_conj()).to(wire_dtype(t.dtype))
    return t.to(wire_dtype(t.dtype))


def _from_wire(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_complex:
        return torch.view_as_complex(t.contiguous()).to(dtype)
    return t if dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def comm_device(group: Any) -> torch.device:
    """Where the group's collectives take tensors: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_to_owner(local: torch.Tensor | None, layout: Layout, owner: int, rank: int, world: int,
                    group: Any, device: torch.device) -> Callable[[], torch.Tensor | None]:
    """Starts gathering the shards along ``layout.shard_dim`` onto the owner; returns the function that waits and
    gives the full tensor on the owner (``None`` elsewhere). ``local=None``: this rank failed and sends NaN."""
    dim = layout.shard_dim
    assert dim is not None
    sizes = chunk_sizes(layout.shape[dim], world)
    wdt = wire_dtype(layout.dtype)
    padded_shape = list(layout.shape) + ([2] if layout.dtype.is_complex else [])
    padded_shape[dim] = sizes[0]
    wire = _to_wire(local.to(device)) if local is not None else None
    if wire is not None and list(wire.shape) == padded_shape and wire.is_contiguous():
        buf = wire  # a full-size shard goes as it is (no copy)
    else:
        buf = torch.full(padded_shape, float("nan"), dtype=wdt, device=device)
        if wire is not None:
            buf.narrow(dim, 0, sizes[rank]).copy_(wire)
    parts = [torch.empty_like(buf) for _ in range(world)] if rank == owner else None
    work = dist.gather(buf, gather_list=parts, group=group, group_dst=owner, async_op=True)

    def finish() -> torch.Tensor | None:
        work.wait()
        if parts is None:
            return None
        full = torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)
        return _from_wire(full, layout.dtype)

    return finish


def local_gram(local: torch.Tensor | None, layout: Layout, dtype: torch.dtype,
               device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """This rank's summand of the reduced buffer: its shard's Gram of the unsharded side (flattened) followed
    by its counts of NaN, Inf, and entries that overflow ``dtype``; all NaN when ``local`` is ``None``."""
    side = gram_side(layout)
    assert side is not None
    buf = torch.empty(side * side + 3, dtype=dtype, device=device)
    if local is None:
        return buf.fill_(float("nan"))
    raw = local.detach().to(device)
    a = raw.to(dtype)
    g = a.t() @ a if layout.shard_dim == 0 else a @ a.t()  # conv1d_hf's (in, out): same spectrum
    buf[:-3] = g.reshape(-1)
    n_nan = int(torch.isnan(raw).sum())
    n_inf = int(torch.isinf(raw).sum())
    buf[-3], buf[-2] = n_nan, n_inf
    buf[-1] = int((~torch.isfinite(a)).sum()) - n_nan - n_inf
    return buf


def reduce_gram_to_owner(buf: torch.Tensor, owner: int, group: Any) -> Callable[[], torch.Tensor]:
    """Starts summing every rank's :func:`local_gram` buffer onto the owner; returns the function that waits and
    gives the sum (valid on the owner)."""
    work = dist.reduce(buf, op=dist.ReduceOp.SUM, group=group, group_dst=owner, async_op=True)

    def finish() -> torch.Tensor:
        work.wait()
        return buf

    return finish
