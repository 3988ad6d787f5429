"""Compiled row loops of the core: the numba settings they share, and their warm-up.

A few per-row passes of the ingest (validating a chunk, picking each device's latest ping,
H3-indexing positions) are numba ``@njit`` functions decorated with :data:`kernel`. They are
compiled once per install and cached on disk beside their module (``heatmap/__pycache__``, or
numba's user cache where that is read-only); later processes only load them.

Numba initialises itself on the first call of a process (~0.4 s). :func:`warmup` makes a first
call of every registered kernel on tiny arrays; ``Heatmap`` calls it when it opens a store, so
no ingest pays that start-up inside its own time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numba
import numpy.typing as npt

kernel: Callable[[Callable[..., Any]], Callable[..., Any]] = numba.njit(
    cache=True, nogil=True, error_model="numpy"
)
"""Decorator of every core kernel: disk-cached, releases the GIL, IEEE division (no checks)."""


def readonly(*arrays: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], ...]:
    """Read-only views of kernel inputs.

    Numba compiles a kernel once per argument type, and a read-only array (what polars and
    arrow hand out) is another type than a writable one: passing every input read-only keeps
    one compiled version per kernel, the one :func:`warmup` loads.
    """
    views = tuple(a.view() for a in arrays)
    for v in views:
        v.flags.writeable = False
    return views


_WARMUPS: list[Callable[[], object]] = []
_LOCK = threading.Lock()
_warmed = False


def warms(fn: Callable[[], object]) -> Callable[[], object]:
    """Register ``fn`` (a first call of some kernels on tiny inputs) with :func:`warmup`."""
    _WARMUPS.append(fn)
    return fn


def warmup() -> None:
    """Load (or compile, once per install) every registered kernel; later calls do nothing."""
    global _warmed
    with _LOCK:
        if not _warmed:
            for fn in _WARMUPS:
                fn()
            _warmed = True
