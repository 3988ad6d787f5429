"""Small immutable value types shared by the pipeline stages, the tiles package and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import polars as pl


class Window(NamedTuple):
    """A time window ``[start, end)`` in UTC epoch seconds.

    >>> Window.of(301, 300)
    Window(start=300, end=600)
    """

    start: int
    end: int

    @classmethod
    def of(cls, ts: int, window_s: int) -> Window:
        """Return the window that contains epoch second ``ts``."""
        start = (ts // window_s) * window_s
        return cls(start, start + window_s)

    def isoformat(self) -> str:
        """Return the start as ISO-8601 UTC (``2026-11-28T09:00:00Z``)."""
        return epoch_to_iso(self.start)


def epoch_to_iso(ts: int) -> str:
    """Return an epoch second as ISO-8601 UTC with a ``Z`` suffix."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Band(NamedTuple):
    """One colour band of the density scale."""

    name: str  # blue | green | yellow | red
    color: str  # "#rrggbb"
    alpha: int  # 0-255, used by the PNG renderer
    lower_km2: float  # inclusive lower bound, people per km2
    label_en: str
    label_zh: str

    @property
    def rgba(self) -> tuple[int, int, int, int]:
        """Return the colour as an (r, g, b, a) tuple."""
        c = self.color.lstrip("#")
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), self.alpha)


@dataclass(frozen=True)
class Snapshot:
    """The published (privacy-applied) values of one window at one H3 resolution.

    Arrays are aligned, sorted by ``cells`` (uint64 H3 indexes) and never mutated after publish:
    they are made read-only. Suppressed cells are simply absent.
    """

    window: Window
    res: int
    version: str  # changes whenever any published value of this window changes
    complete: bool  # False while the window is open (live, partial)
    cells: npt.NDArray[np.uint64]
    people: npt.NDArray[np.float64]
    density_km2: npt.NDArray[np.float64]
    band: npt.NDArray[np.uint8]  # index into ``bands``
    bands: tuple[Band, ...] = field(default=())
    dp_epsilon: float | None = None

    def __post_init__(self) -> None:
        for a in (self.cells, self.people, self.density_km2, self.band):
            a.setflags(write=False)

    def __len__(self) -> int:
        return int(self.cells.shape[0])

    @property
    def band_names(self) -> tuple[str, ...]:
        """Return the band names in index order."""
        return tuple(b.name for b in self.bands)

    @property
    def band_rgba(self) -> npt.NDArray[np.uint8]:
        """Return an (n_bands, 4) uint8 array of RGBA colours, in index order."""
        return np.array([b.rgba for b in self.bands], dtype=np.uint8).reshape(-1, 4)

    def lookup(self, cells: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        """Return the row of each cell in this snapshot, or -1 where it is not published."""
        pos = np.searchsorted(self.cells, cells)
        pos = np.minimum(pos, max(len(self) - 1, 0))
        found = (
            (len(self) > 0) & (self.cells[pos] == cells)
            if len(self)
            else np.zeros(cells.shape, dtype=bool)
        )
        return np.where(found, pos, -1)


@dataclass(frozen=True)
class Published:
    """Privacy-applied values of one window: published cells only, all resolutions."""

    window: Window
    frame: pl.DataFrame  # columns res, cell (uint64), people (float64), sorted by (res, cell)
