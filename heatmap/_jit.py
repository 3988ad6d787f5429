"""Compiled row loops of the core: the numba settings they share, loaded lazily, and their warm-up.

A few per-row passes of the ingest (validating a chunk, picking each device's latest ping,
H3-indexing positions) are numba ``@njit`` functions decorated with :data:`kernel`. They are
compiled once per install and cached on disk beside their module (``heatmap/__pycache__``, or
numba's user cache where that is read-only); later processes only load them.

Numba costs about 0.25 s to import and 0.2 s more to initialise on a process's first kernel
call, more than a small input takes to ingest whole. So nothing here imports numba up front:
:data:`kernel` returns a stand-in that turns every registered kernel into a numba dispatcher
on the first call of any of them (so kernels that call each other see dispatchers), and the
callers take a numpy or polars path for small inputs while numba is not loaded
(:func:`worth`). A long-lived process (the HTTP service, a benchmark) calls
``warmup(now=True)`` to load everything before its first request.
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy.typing as npt

_OPTIONS: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}
"""Of every core kernel: disk-cached, releases the GIL, IEEE division (no checks)."""

SMALL_ROWS = 1 << 18
"""Below this many rows a pass takes its numpy/polars path while numba is not loaded yet."""

_LOCK = threading.RLock()
_LAZY: list[_Kernel] = []
_loaded = False


class _Kernel:
    """A numba kernel made on first use; calls and attributes go to the dispatcher."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func = fn
        self.options = options
        self.dispatcher: Any = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        d = self.dispatcher
        if d is None:
            _load()
            d = self.dispatcher
        return d(*args)

    def __getattr__(self, name: str) -> Any:
        if name in ("dispatcher", "options"):  # not set yet (during __init__)
            raise AttributeError(name)
        if self.dispatcher is None:
            _load()
        return getattr(self.dispatcher, name)


def kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a core kernel: a numba ``njit`` (cached, GIL released), made on first use."""
    return _lazy(fn, _OPTIONS)


def inline(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a scalar helper of kernels, inlined into them by numba (made on first use)."""
    return _lazy(fn, {**_OPTIONS, "inline": "always"})


def _lazy(fn: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    with _LOCK:
        if _loaded:
            return _njit(fn, options)
        k = _Kernel(fn, options)
        _LAZY.append(k)
        return k


def _njit(fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    import numba

    return numba.njit(**options)(fn)


def _load() -> None:
    """Import numba and make every pending kernel a dispatcher, rebinding its module's name
    (a kernel called from another kernel must be a dispatcher when that one compiles)."""
    global _loaded
    with _LOCK:
        if _loaded:
            return
        for k in _LAZY:
            k.dispatcher = _njit(k.py_func, k.options)
            scope = k.py_func.__globals__
            if scope.get(k.py_func.__name__) is k:
                scope[k.py_func.__name__] = k.dispatcher
        _LAZY.clear()
        _loaded = True


def loaded() -> bool:
    """Return whether numba is loaded in this process (kernels then cost nothing extra)."""
    return _loaded and "numba" in sys.modules


def worth(rows: int) -> bool:
    """Return whether a pass over ``rows`` rows should use its kernel rather than numpy.

    Kernels win on large inputs; loading numba for a small one would cost more than the pass.
    """
    return rows >= SMALL_ROWS or loaded()


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
_WARM_LOCK = threading.Lock()
_warmed = False
_preloading: list[threading.Thread] = []


def warms(fn: Callable[[], object]) -> Callable[[], object]:
    """Register ``fn`` (a first call of some kernels on tiny inputs) with :func:`warmup`."""
    _WARMUPS.append(fn)
    return fn


def warmup(*, now: bool = False) -> None:
    """Load (or compile, once per install) the registered kernels if ``now``; else nothing.

    Opening a store calls this without ``now``: kernels load on first use, only those used,
    so a command that indexes nothing (or a small file) never loads numba. A long-lived
    process passes ``now=True`` before its first request. Later calls do nothing.
    """
    global _warmed
    if not now:
        return
    with _WARM_LOCK:
        if not _warmed:
            for fn in _WARMUPS:
                fn()
            _warmed = True


def preload_soon() -> None:
    """Start loading every registered kernel on a background thread (a large input is coming:
    it will need them, and they load while its first chunks are read)."""
    with _LOCK:
        if _warmed or _preloading:
            return
        t = threading.Thread(target=warmup, kwargs={"now": True}, name="heatmap-kernels")
        t.daemon = True
        _preloading.append(t)
        if len(_preloading) == 1:
            atexit.register(t.join)  # never leave the process while numba is loading
        t.start()
