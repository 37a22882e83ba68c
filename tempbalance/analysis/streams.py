"""Handing tensors made on one CUDA stream to work on another: the snapshot of a background (``lag >= 1``) pass.

The snapshot is copied on the training stream; the background thread analyses it on a stream of its own. Without
ordering, the analysis could read the copies before they are written, and torch's caching allocator - which ties a
block to the stream it was allocated on - could give the copies' memory to the training stream while the analysis
still reads it. :class:`Handoff` records an event after the copies (producer side); :meth:`Handoff.run` (consumer
side) makes a side stream wait for that event, marks every tensor as used there (``Tensor.record_stream``: its
memory is not reused before the work queued there is done) and runs the analysis with that stream current.
CPU tensors need none of this and pass through.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch

from . import cuda_backend


class _CudaApi:
    """The torch.cuda calls a handoff makes (tests substitute a recording stand-in)."""

    Event = torch.cuda.Event
    Stream = torch.cuda.Stream
    current_stream = staticmethod(torch.cuda.current_stream)
    stream = staticmethod(torch.cuda.stream)

    @staticmethod
    def record_stream(tensor: torch.Tensor, stream: Any) -> None:
        tensor.record_stream(stream)


API: Any = _CudaApi


class Handoff:
    """Tensors just written on their devices' current streams, to be used by work on other streams.

    Build it right after the copies are enqueued (it records one event per device there); call :meth:`run` where
    they are used. Holds the tensors until then.
    """

    def __init__(self, tensors: Iterable[torch.Tensor]):
        self.tensors = [t for t in tensors if cuda_backend.is_device(t)]
        self.events: dict[torch.device, Any] = {}
        for t in self.tensors:
            if t.device not in self.events:
                event = API.Event()
                event.record(API.current_stream(t.device))
                self.events[t.device] = event

    @contextlib.contextmanager
    def consumer(self):
        """The body runs with, on every device, a side stream current that first waits for the copies; each
        tensor's memory stays reserved until the work the body queued there is done."""
        with contextlib.ExitStack() as stack:
            for device, event in self.events.items():
                side = API.Stream(device)
                side.wait_event(event)
                for t in self.tensors:
                    if t.device == device:
                        API.record_stream(t, side)
                stack.enter_context(API.stream(side))
            yield

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` inside :meth:`consumer` (what a background thread calls)."""
        with self.consumer():
            return fn(*args, **kwargs)
