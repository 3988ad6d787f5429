"""Windows, one position per device per window, counts per cell, exact roll-up.

This is the aggregation kernel shared by the local engine (``heatmap ingest``) and the Dask engine
(``heatmap aggregate --engine dask``). Everything here is a pure function of DataFrames / arrays.

A device's *position* in a window is its latest ping there. Ties on ``ts`` are broken by the
larger ``(lat, lng)``, so the rule is associative and commutative: reducing chunks separately
and then reducing the union gives the same answer as reducing everything at once, whatever the
row order. Only positions (not pings) are indexed to H3, which is where most of the work is saved.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

# H3 index bit layout (h3geo.org/docs/library/index/cell): 4 bits of resolution at 52..55,
# then 15 digits of 3 bits each, digit 1 at bits 42..44 and digit 15 at bits 0..2.
_RES_SHIFT = np.uint64(52)
_RES_MASK = np.uint64(0xF) << _RES_SHIFT


# Seed of the in-memory grouping hash; it never leaves the process (see ``pings_to_positions``).
_GROUP_SEED = 0x6865617470
_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads window numbers over the key space


def pings_to_positions(pings: pl.DataFrame, window_s: int, res: int) -> pl.DataFrame:
    """Reduce pings to each device's position (latest ping) per window, indexed at ``res``.

    Parameters
    ----------
    pings
        Columns ``device_id`` (str) or ``device`` (int64), ``ts`` (int64 epoch s), ``lat``, ``lng``.
    window_s
        Window length in seconds; window number ``w = ts // window_s``.
    res
        H3 resolution of the ``cell`` column.

    Returns
    -------
    DataFrame
        Columns ``w``, ``device`` (as given), ``ts``, ``cell`` (uint64), one row per (w, device).

    Notes
    -----
    Grouping by one 64-bit key, ``hash(device) XOR w * 0x9E37...``, is several times faster than
    by the pair; a false merge needs a 64-bit collision (about ``n^2 / 2^65`` for ``n`` keys).
    Only rows at their group's latest ``ts`` are indexed, so most pings never need an H3 index.
    Ties on ``ts`` keep the larger cell: the rule is associative and order-independent.
    """
    dev = "device_id" if "device_id" in pings.columns else "device"
    w = pl.col("ts") // window_s
    key = pl.col(dev).hash(_GROUP_SEED) ^ (w.cast(pl.UInt64) * pl.lit(_GOLDEN, pl.UInt64))
    latest = (
        pings.lazy()
        .with_columns(_k=key)
        .filter(pl.col("ts") == pl.col("ts").max().over("_k"))
        .with_columns(w=w, cell=plh3.latlng_to_cell("lat", "lng", res, return_dtype=pl.UInt64))
        .select("_k", "w", dev, "ts", "cell")
        .collect()
    )
    return _keep_max_cell(latest, "_k").drop("_k")


def _keep_max_cell(df: pl.DataFrame, key: str) -> pl.DataFrame:
    # Rows left per key share the latest ts; keep the larger cell, then one of identical rows.
    return (
        df.lazy()
        .filter(pl.col("cell") == pl.col("cell").max().over(key))
        .unique(subset=[key], keep="any")
        .collect()
    )


def merge_positions(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Merge position frames (chunks, partitions, stored state) into one row per (w, device).

    The same rule as ``pings_to_positions``: latest ``ts``, ties to the larger cell.
    """
    frames = [f for f in frames if f.height]
    if not frames:
        return empty_positions()
    if len(frames) == 1:
        return frames[0]
    key = pl.col("device").reinterpret(signed=False) ^ (
        pl.col("w").cast(pl.UInt64) * pl.lit(_GOLDEN, pl.UInt64)
    )
    latest = (
        pl.concat(frames, how="vertical_relaxed")
        .lazy()
        .with_columns(_k=key)
        .filter(pl.col("ts") == pl.col("ts").max().over("_k"))
        .collect()
    )
    return _keep_max_cell(latest, "_k").drop("_k")


def empty_positions() -> pl.DataFrame:
    """Return an empty positions frame with the right schema."""
    return pl.DataFrame(
        schema={"w": pl.Int64, "device": pl.Int64, "ts": pl.Int64, "cell": pl.UInt64}
    )


def cells_to_counts(cells: pl.DataFrame) -> pl.DataFrame:
    """Count devices per (w, cell): columns ``w``, ``cell`` (uint64), ``devices`` (int64)."""
    return cells.group_by("w", "cell").agg(devices=pl.len().cast(pl.Int64)).sort("w", "cell")


def cells_to_parent(cells: U64, res: int) -> U64:
    """Return the parent of each H3 cell at coarser resolution ``res`` (vectorised bit maths).

    Notes
    -----
    A cell's parent at ``res`` has the resolution field set to ``res`` and every digit finer than
    ``res`` set to 7 (unused). Cells already at or coarser than ``res`` are invalid input.
    """
    cells = np.asarray(cells, dtype=np.uint64)
    unused = np.uint64((1 << (3 * (15 - res))) - 1)  # digits res+1..15 all set to 0b111
    return (cells & ~_RES_MASK & ~unused) | (np.uint64(res) << _RES_SHIFT) | unused


def cell_resolution(cells: U64) -> npt.NDArray[np.int64]:
    """Return the H3 resolution of each cell."""
    return ((np.asarray(cells, dtype=np.uint64) & _RES_MASK) >> _RES_SHIFT).astype(np.int64)


def rollup(counts: pl.DataFrame, base_res: int, min_res: int) -> pl.DataFrame:
    """Return exact counts at every resolution from ``base_res`` down to ``min_res``.

    ``counts`` has columns ``w``, ``cell`` (uint64 at ``base_res``), ``devices``; the result has
    ``w``, ``res``, ``cell``, ``devices`` sorted by (w, res, cell), all windows at once. A parent's
    count is the sum of its children's (each device is in exactly one child), so it is exact.
    """
    levels = [counts.select("w", pl.lit(base_res, pl.Int8).alias("res"), "cell", "devices")]
    cur = levels[0]
    for res in range(base_res - 1, min_res - 1, -1):
        parents = cells_to_parent(cur["cell"].to_numpy(), res)
        cur = (
            cur.with_columns(cell=pl.Series(parents, dtype=pl.UInt64), res=pl.lit(res, pl.Int8))
            .group_by("w", "res", "cell")
            .agg(pl.col("devices").sum())
        )
        levels.append(cur)
    return pl.concat(levels).sort("w", "res", "cell")
