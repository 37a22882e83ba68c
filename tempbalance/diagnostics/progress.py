"""Progress that is optional: tqdm bars when installed and worth it, plain lines for logs (stderr not a terminal)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, TextIO, TypeVar

T = TypeVar("T")

MIN_ITEMS = 8  # fewer items finish in a blink; a bar would only add noise


def progress(items: Iterable[T], *, desc: str, unit: str = "it", enabled: bool = True) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled``, tqdm is importable and there are at least
    ``MIN_ITEMS`` of them; tqdm itself hides the bar when stderr is not a terminal."""
    if not enabled:
        return items
    try:
        n = len(items)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n is not None and n < MIN_ITEMS:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit=unit, total=n, disable=None, leave=False)


class StepBar:
    """Progress over the optimizer steps of many runs. On a terminal: one tqdm bar (when tqdm is installed). Else
    (output to a file or CI, or no tqdm): plain lines - one at every :meth:`note` (a run starting) and one at the
    end - so a log shows the job is alive. ``enabled=False``: nothing."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None):
        self.total, self.desc, self.done = total, desc, 0
        self.stream = stream
        self.start = time.perf_counter()
        self.bar = None
        self.lines = False
        if not enabled:
            return
        out = stream if stream is not None else sys.stderr
        if getattr(out, "isatty", lambda: False)():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", file=out)
                return
            except ImportError:
                pass
        self.lines = True

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text} ({self.done}/{self.total} steps, {time.perf_counter() - self.start:.0f} s)",
              file=self.stream if self.stream is not None else sys.stderr, flush=True)

    def update(self, k: int = 1) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        elif self.lines:
            self._line(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines:
            self._line("done")
