"""Progress bars that are optional: tqdm when installed and worth it, the plain iterable otherwise."""
from __future__ import annotations

from typing import Iterable, TypeVar

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
