"""Snapshots built directly with h3-py around People's Square, for the tiles tests."""

from __future__ import annotations

import h3
import numpy as np

from heatmap.model import Band, Snapshot, Window

PEOPLES_SQUARE = (31.2335, 121.4755)

BANDS = (
    Band("blue", "#3b6fd4", 180, 0.0, "Quiet", "宽松"),
    Band("green", "#5cd699", 180, 5_000.0, "Moderate", "适中"),
    Band("yellow", "#fde725", 180, 15_000.0, "Busy", "较挤"),
    Band("red", "#d7191c", 180, 30_000.0, "Crowded", "拥挤"),
)


def make_snapshot(
    res: int,
    rings: int,
    *,
    seed: int = 0,
    version: str | None = None,
    centre: tuple[float, float] = PEOPLES_SQUARE,
    drop: float = 0.1,
    integral: bool = True,
) -> Snapshot:
    """All cells of ``rings`` grid rings around ``centre`` (minus a random ``drop`` share)."""
    rng = np.random.default_rng(seed)
    c = h3.latlng_to_cell(*centre, res)
    cells = np.array(sorted(h3.str_to_int(x) for x in h3.grid_disk(c, rings)), dtype=np.uint64)
    cells = cells[rng.random(cells.size) >= drop]
    people = rng.integers(10, 2_000, cells.size).astype(np.float64)
    if not integral:
        people = people + rng.normal(0.0, 3.0, cells.size)
    area = np.array([h3.cell_area(h3.int_to_str(int(x)), "km^2") for x in cells])
    dens = people / area
    lower = np.array([b.lower_km2 for b in BANDS])
    band = (np.searchsorted(lower, dens, side="right") - 1).astype(np.uint8)
    return Snapshot(
        window=Window(1_764_320_400, 1_764_320_700),
        res=res,
        version=version or f"test-r{res}-k{rings}-s{seed}-{int(integral)}",
        complete=True,
        cells=cells,
        people=people,
        density_km2=dens,
        band=band,
        bands=BANDS,
    )
