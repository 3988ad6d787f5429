"""What the renderers read from a published snapshot, as structural types.

``heatmap.model.Snapshot`` satisfies :class:`CellLayer` without importing anything from here, so
``tiles`` stays a library that depends on numbers, not on the pipeline that made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class BandLike(Protocol):
    """One colour band of the density scale (``heatmap.model.Band`` fits)."""

    @property
    def name(self) -> str:
        """Band name, e.g. ``"yellow"``; published as the MVT ``band`` property."""
        ...

    @property
    def color(self) -> str:
        """Colour as ``"#rrggbb"``."""
        ...

    @property
    def alpha(self) -> int:
        """Opacity 0-255 used by the PNG renderer."""
        ...

    @property
    def lower_km2(self) -> float:
        """Inclusive lower bound of the band, people per km2."""
        ...

    @property
    def label_en(self) -> str:
        """English label."""
        ...

    @property
    def label_zh(self) -> str:
        """Chinese label."""
        ...


@runtime_checkable
class CellLayer(Protocol):
    """Published values of one window at one H3 resolution (``heatmap.model.Snapshot`` fits).

    ``cells`` are sorted, unique uint64 H3 indexes of resolution ``res``; the other arrays are
    aligned with them. ``version`` must change whenever any value or the cell set changes: the
    renderers cache their spatial index under it.
    """

    @property
    def res(self) -> int:
        """H3 resolution of every cell."""
        ...

    @property
    def version(self) -> str:
        """Identifies the published values; a new value means new tiles."""
        ...

    @property
    def cells(self) -> npt.NDArray[np.uint64]:
        """Sorted uint64 H3 indexes."""
        ...

    @property
    def people(self) -> npt.NDArray[np.float64]:
        """People per cell as published (after suppression / noise)."""
        ...

    @property
    def density_km2(self) -> npt.NDArray[np.float64]:
        """People per km2 of true cell area."""
        ...

    @property
    def band(self) -> npt.NDArray[np.uint8]:
        """Index of each cell's band in ``bands``."""
        ...

    @property
    def bands(self) -> Sequence[BandLike]:
        """The colour bands, in index order."""
        ...


def band_rgba(bands: Sequence[BandLike]) -> npt.NDArray[np.uint8]:
    """Return an ``(n_bands, 4)`` uint8 array of RGBA colours, in index order."""
    out = np.zeros((len(bands), 4), dtype=np.uint8)
    for i, b in enumerate(bands):
        c = b.color.lstrip("#")
        out[i] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), b.alpha)
    return out
