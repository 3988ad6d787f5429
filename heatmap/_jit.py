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

Ahead of time: ``python -m heatmap.aot`` (run by ``make``) compiles the same kernels, for the
argument types they are called with, into an extension module beside this one
(``heatmap/_kernels*.so`` and its manifest ``_kernels.json``). A kernel call whose arguments
fit one of those signatures exactly runs that native code: numba is then never imported (its
~0.5 s start-up is gone). The build is used only while it matches the kernels' source files,
numpy and this CPU; any other call, or a stale or missing build, takes the numba path above,
with the same results. ``HEATMAP_AOT=0`` turns the build off.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_OPTIONS: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}
"""Of every core kernel: disk-cached, releases the GIL, IEEE division (no checks)."""

SMALL_ROWS = 1 << 18
"""Below this many rows a pass takes its numpy/polars path while numba is not loaded yet."""

_LOCK = threading.RLock()
_LAZY: list[_Kernel] = []
_ALL: list[_Kernel] = []  # every kernel ever registered (the ahead-of-time build's list)
_loaded = False


class _Kernel:
    """A numba kernel made on first use; calls and attributes go to the dispatcher."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func = fn
        self.options = options
        self.dispatcher: Any = None
        self.native: list[tuple[tuple[Any, ...], Callable[..., Any]]] | None = None
        functools.update_wrapper(self, fn)

    @property
    def key(self) -> str:
        """The kernel's name in the ahead-of-time manifest: ``module:function``."""
        return f"{self.py_func.__module__}:{self.py_func.__name__}"

    def __call__(self, *args: Any) -> Any:
        d = self.dispatcher
        if d is None:
            if self.native is None:
                self.native = _aot().get(self.key, [])
            for specs, fn in self.native:
                if len(specs) == len(args) and all(map(_fits, specs, args)):
                    return fn(*args)
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
        if _loaded:  # numba is in: a dispatcher, listed for the ahead-of-time build
            k = _Kernel(fn, options)
            k.dispatcher = _njit(fn, options)
            _ALL.append(k)
            return k.dispatcher
        k = _Kernel(fn, options)
        _LAZY.append(k)
        _ALL.append(k)
        return k


def _njit(fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    import numba

    return numba.njit(**options)(fn)


def prefetch(array: npt.NDArray[Any], index: int) -> None:
    """Ask the CPU to start fetching ``array[index]`` into its caches; nothing else.

    A kernel that reads a large table at random (an 8 MB hash table of device ids, say) asks
    for the slot it will read some rows later, so the wait for memory overlaps with the work
    on the rows between. Compiled, this is LLVM's ``llvm.prefetch`` (a read, kept in every
    cache level); called from Python it does nothing. ``index`` must be within the array.
    """


def _register_prefetch() -> None:
    """Give :func:`prefetch` its compiled form (numba is being loaded)."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.core.extending import intrinsic, overload

    @intrinsic  # type: ignore[misc]
    def _hint(typingctx: Any, array: Any, index: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            at = builder.gep(ary.data, [args[1]])
            byte = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
                "llvm.prefetch.p0",
            )
            # a read (0), kept in every cache level (3), of data (1)
            builder.call(fn, [builder.bitcast(at, byte), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(array, index), codegen

    @overload(prefetch, inline="always")  # type: ignore[misc]
    def _prefetch(array, index):  # type: ignore[no-untyped-def]  # numba: names as prefetch's
        if isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer):
            return lambda array, index: _hint(array, index)  # type: ignore[call-arg]
        return None


def _load() -> None:
    """Import numba and make every pending kernel a dispatcher, rebinding its module's name
    (a kernel called from another kernel must be a dispatcher when that one compiles)."""
    global _loaded
    with _LOCK:
        if _loaded:
            return
        _register_prefetch()
        for k in _LAZY:
            k.dispatcher = _njit(k.py_func, k.options)
            scope = k.py_func.__globals__
            if scope.get(k.py_func.__name__) is k:
                scope[k.py_func.__name__] = k.dispatcher
        _LAZY.clear()
        _loaded = True


def loaded() -> bool:
    """Return whether kernels cost nothing extra to call: numba is loaded in this process, or
    the ahead-of-time build is in use."""
    return (_loaded and "numba" in sys.modules) or bool(_aot())


# -- the ahead-of-time build --------------------------------------------------------------------

AOT_MODULE = "_kernels"
"""The extension module ``python -m heatmap.aot`` writes into this package, and its manifest
(``_kernels.json``)."""

_PACKAGE = Path(__file__).resolve().parent
_AOT_STATE: dict[str, list[tuple[tuple[Any, ...], Callable[..., Any]]]] | None = None
_AOT_BUILD: str | None = None  # the digest of the manifest of the build in use


def aot_stamp(files: Sequence[str]) -> dict[str, Any]:
    """What an ahead-of-time build depends on: the kernels' source files (paths relative to
    the package), numpy's version, Python's, and the CPU's instruction-set flags."""
    return {
        "files": {f: hashlib.sha256((_PACKAGE / f).read_bytes()).hexdigest() for f in files},
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "cpu_flags": sorted(_cpu_flags()),
    }


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _aot() -> dict[str, list[tuple[tuple[Any, ...], Callable[..., Any]]]]:
    """Return {kernel key -> [(argument specs, native function)]} of the ahead-of-time build,
    or {} when there is none, it is turned off, or it no longer matches (then numba serves)."""
    global _AOT_STATE
    state = _AOT_STATE
    if state is None:
        with _LOCK:
            if _AOT_STATE is None:
                _AOT_STATE = _open_aot()
            state = _AOT_STATE
    return state


def aot_build() -> str | None:
    """Name the ahead-of-time build in use (its manifest's digest), or None when numba serves.
    Whatever one build computes, another process using the same build computes alike."""
    return _AOT_BUILD if _aot() else None


def _open_aot() -> dict[str, list[tuple[tuple[Any, ...], Callable[..., Any]]]]:
    global _AOT_BUILD
    if os.environ.get("HEATMAP_AOT", "1") == "0":
        return {}
    try:
        text = (_PACKAGE / f"{AOT_MODULE}.json").read_bytes()
        manifest = json.loads(text)
        built = manifest["stamp"]
        now = aot_stamp(list(built["files"]))
        if any(built[k] != now[k] for k in ("files", "numpy", "python")):
            return {}
        if not set(built["cpu_flags"]) <= set(now["cpu_flags"]):
            return {}  # built on a CPU with instructions this one lacks
        module = importlib.import_module(f"{__package__}.{AOT_MODULE}")
        _AOT_BUILD = hashlib.sha256(text).hexdigest()
        return {
            key: [(_specs(e["args"]), getattr(module, e["symbol"])) for e in entries]
            for key, entries in manifest["exports"].items()
        }
    except (OSError, ValueError, KeyError, ImportError, AttributeError):
        return {}


def _specs(args: list[Any]) -> tuple[Any, ...]:
    """Turn the manifest's argument types into what :func:`_fits` checks."""
    out: list[Any] = []
    for a in args:
        if a["kind"] == "array":
            out.append(("array", np.dtype(a["dtype"]), a["ndim"], a["layout"], a["readonly"]))
        elif a["kind"] == "tuple":
            out.append(("tuple", _specs(a["items"])))
        else:
            out.append(("scalar", np.dtype(a["dtype"])))
    return tuple(out)


_PY_SCALARS = {bool: np.dtype(np.bool_), int: np.dtype(np.int64), float: np.dtype(np.float64)}


def _fits(spec: tuple[Any, ...], value: Any) -> bool:
    """Whether numba would type ``value`` as ``spec`` (so the native code reads it right: the
    compiled wrapper checks an array's dimensions but not its element type)."""
    kind = spec[0]
    if kind == "array":
        if type(value) is not np.ndarray:
            return False
        flags = value.flags
        return bool(
            value.dtype == spec[1]
            and value.ndim == spec[2]
            and flags.aligned
            and (spec[3] != "C" or flags.c_contiguous)
            and (spec[4] or flags.writeable)
        )
    if kind == "tuple":
        return (
            isinstance(value, tuple)
            and len(value) == len(spec[1])
            and all(map(_fits, spec[1], value))
        )
    t = type(value)
    if t is int:
        return spec[1] == np.int64 and -(1 << 63) <= value < (1 << 63)
    want = _PY_SCALARS.get(t)
    if want is not None:
        return bool(spec[1] == want)
    return isinstance(value, np.generic) and value.dtype == spec[1]


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
