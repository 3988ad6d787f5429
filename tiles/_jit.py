"""Compiled per-tile kernels: the numba settings they share, and their warm-up.

The renderers' hot loops (index query, MVT geometry and bytes, PNG scanline fill) are numba
``@njit`` functions decorated with :data:`kernel`. Each is compiled for exactly one set of
argument types (the dtypes and C layouts of :class:`tiles.index.CellIndex`), on first call, and
the machine code is cached on disk next to the module (``tiles/__pycache__``, or numba's user
cache directory where that is read-only), so later processes only load it.

:func:`warmup` makes that first call on a tiny layer, so no request pays for compiling (~10-20 s
on two cores, once per install) or loading (a few hundred milliseconds per process, mostly numba
initialising itself) the kernels. The API calls it when it creates the app; batch jobs simply
pay it on their first tile.

Each renderer registers what it renders for the warm-up with :func:`warms` (and the index cache
registers how to forget the warm-up layer with :func:`forgets`), so this module imports none of
them back. ``tiles/__init__.py`` imports every renderer, so all are registered by the time
anyone can call :func:`warmup`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from tiles.source import BandLike, CellLayer

kernel = numba.njit(cache=True, nogil=True, error_model="numpy")
"""Decorator of every kernel: disk-cached, releases the GIL, IEEE division (no checks)."""

WarmUp = Callable[[CellLayer, int, int, int], object]
"""A warm-up: render tile ``z/x/y`` of the warm-up layer, calling some kernels."""

_WARMUPS: list[WarmUp] = []
_FORGETS: list[Callable[[CellLayer], object]] = []
_WARM = threading.Lock()
_warmed = False


def warms(fn: WarmUp) -> WarmUp:
    """Register ``fn(layer, z, x, y)`` (a first call of some kernels) with :func:`warmup`."""
    _WARMUPS.append(fn)
    return fn


def forgets(fn: Callable[[CellLayer], object]) -> Callable[[CellLayer], object]:
    """Register ``fn(layer)``, run after every warm-up, to drop what they cached of the layer."""
    _FORGETS.append(fn)
    return fn


@dataclass(frozen=True)
class _Band:
    name: str
    color: str
    alpha: int
    lower_km2: float
    label_en: str
    label_zh: str


@dataclass(frozen=True)
class _Layer:
    res: int
    version: str
    cells: npt.NDArray[np.uint64]
    people: npt.NDArray[np.float64]
    density_km2: npt.NDArray[np.float64]
    band: npt.NDArray[np.uint8]
    bands: tuple[BandLike, ...]


def _warmup_layer() -> _Layer:
    """Seven res-9 cells (a hexagon and its ring) near 0 N 0 E, on the smallest index there is."""
    import h3

    centre = h3.latlng_to_cell(0.0, 0.0, 9)
    cells = np.array(sorted(h3.str_to_int(c) for c in h3.grid_disk(centre, 1)), dtype=np.uint64)
    n = cells.size
    return _Layer(
        res=9,
        version=f"tiles-warmup-{time.monotonic_ns()}",
        cells=cells,
        people=np.arange(10.0, 10.0 + n),
        density_km2=np.arange(100.0, 100.0 + n),
        band=(np.arange(n) % 2).astype(np.uint8),
        bands=(
            _Band("a", "#000000", 128, 0.0, "A", "A"),
            _Band("b", "#ffffff", 128, 1.0, "B", "B"),
        ),
    )


def warmup() -> float:
    """Compile (or load from the disk cache) every kernel; return the seconds it took.

    Runs every registered warm-up (the renderers: one MVT and the PNG variants, fill, outline
    and ``@2x``) on a tile of a seven-cell layer, which calls every kernel with the argument
    types real snapshots give it; then the registered forgets drop the layer from the
    process-wide caches. Thread-safe; only the first call does anything, later ones return 0.
    """
    global _warmed
    with _WARM:
        if _warmed:
            return 0.0
        t0 = time.perf_counter()
        layer = _warmup_layer()
        # The zoom-14 tile whose north-west corner is 0 N 0 E: the ~1 km wide group of cells
        # straddles its edges, so both clipped and whole hexagons go through the kernels.
        z, x, y = 14, 1 << 13, 1 << 13
        try:
            for fn in _WARMUPS:
                fn(layer, z, x, y)
        finally:
            for forget in _FORGETS:
                forget(layer)
        _warmed = True
        return time.perf_counter() - t0


__all__ = ["forgets", "kernel", "warms", "warmup"]
