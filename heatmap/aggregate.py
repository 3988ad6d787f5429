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
import pyarrow as pa
from h3ronpy.vector import coordinates_to_cells

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
        Columns ``device_id`` (str or Categorical) or ``device`` (int64), ``ts`` (int64 epoch
        s), ``lat``, ``lng``.
    window_s
        Window length in seconds; window number ``w = ts // window_s``.
    res
        H3 resolution of the ``cell`` column.

    Returns
    -------
    DataFrame
        Columns ``w``, the device column as given, ``ts``, ``cell`` (uint64), one row per
        (w, device).

    Notes
    -----
    Only rows at their group's latest ``ts`` are indexed, so most pings never need an H3 index.
    Ties on ``ts`` keep the larger cell: the rule is associative and order-independent.
    Dictionary-encoded (Categorical) ids take a dense numpy path: the key ``w * D + code``
    indexes an array, and one ``maximum.at`` finds every group's latest ``ts``. Other ids are
    grouped by one 64-bit key, ``hash(device) XOR w * 0x9E37...``, several times faster than by
    the pair; a false merge would need a 64-bit collision (about ``n^2 / 2^65`` for ``n`` keys).
    """
    dev = "device_id" if "device_id" in pings.columns else "device"
    if pings.height and isinstance(pings.schema[dev], pl.Categorical):
        out = _dense_positions(pings, dev, window_s, res)
        if out is not None:
            return out
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
    if latest["_k"].n_unique() < latest.height:  # ties on ts: keep the larger cell
        latest = _keep_max_cell(latest, "_k")
    return latest.drop("_k")


_DENSE_LIMIT = 1 << 26  # cells of the dense (window, device) table before falling back


def _dense_positions(pings: pl.DataFrame, dev: str, window_s: int, res: int) -> pl.DataFrame | None:
    codes = pings[dev].to_physical().to_numpy().astype(np.int64)
    ts = pings["ts"].to_numpy()
    w = ts // window_s
    w0 = int(w.min())
    n_dev = int(codes.max()) + 1
    size = (int(w.max()) - w0 + 1) * n_dev
    if size > max(_DENSE_LIMIT, 4 * len(ts)):
        return None
    key = (w - w0) * n_dev + codes
    best = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(best, key, ts)
    rows = np.flatnonzero(ts == best[key])
    lat, lng = pings["lat"].to_numpy()[rows], pings["lng"].to_numpy()[rows]
    cells = np.asarray(pa.array(coordinates_to_cells(lat, lng, res)).to_numpy(), dtype=np.uint64)
    out = pl.DataFrame(
        {
            "_k": key[rows],
            "w": w[rows],
            dev: pings[dev].gather(rows),
            "ts": ts[rows],
            "cell": pl.Series(cells, dtype=pl.UInt64),
        }
    )
    if len(rows) > 1 and np.bincount(key[rows] - key[rows].min()).max() > 1:
        out = _keep_max_cell(out, "_k")
    return out.drop("_k")


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

    The same rule as ``pings_to_positions``: latest ``ts``, ties to the larger cell. Only the
    windows present in more than one frame need the reduction; the rest are passed through
    (time-ordered input shares just the windows at chunk boundaries).
    """
    frames = [f for f in frames if f.height]
    if not frames:
        return empty_positions()
    if len(frames) == 1:
        return frames[0]
    seen = pl.concat([f.select(pl.col("w").unique()) for f in frames])["w"]
    shared = seen.filter(seen.is_duplicated()).unique()
    both = pl.concat(frames, how="vertical_relaxed")
    if shared.len() == 0:
        return both
    in_shared = pl.col("w").is_in(shared.implode())
    # Grouped on the exact (w, device) pair: a merged frame can hold billions of positions
    # (a city-day backfill), where a 64-bit combined key would expect a collision.
    keys = ["w", "device"]
    todo = both.filter(in_shared)
    latest = todo.filter(pl.col("ts") == pl.col("ts").max().over(keys))
    if latest.select(pl.struct(keys).n_unique()).item() < latest.height:
        latest = latest.filter(pl.col("cell") == pl.col("cell").max().over(keys)).unique(
            subset=keys, keep="any"
        )
    return pl.concat([both.filter(~in_shared), latest])


def empty_positions() -> pl.DataFrame:
    """Return an empty positions frame with the right schema."""
    return pl.DataFrame(
        schema={"w": pl.Int64, "device": pl.Int64, "ts": pl.Int64, "cell": pl.UInt64}
    )


def cells_to_counts(cells: pl.DataFrame) -> pl.DataFrame:
    """Count devices per (w, cell): columns ``w``, ``cell`` (uint64), ``devices``, sorted."""
    ordered = cells.select("w", "cell").sort("w", "cell")
    w = ordered["w"].to_numpy()
    c = ordered["cell"].to_numpy().astype(np.uint64)
    starts = _run_starts(w, c)
    devices = np.diff(np.append(starts, len(w)))
    return pl.DataFrame(
        {
            "w": w[starts].astype(np.int64),
            "cell": pl.Series(c[starts], dtype=pl.UInt64),
            "devices": devices.astype(np.int64),
        }
    )


def _run_starts(w: npt.NDArray[np.int64], key: U64) -> npt.NDArray[np.intp]:
    """Return the first index of each run of equal (w, key) in arrays sorted by (w, key)."""
    if len(w) == 0:
        return np.zeros(0, dtype=np.intp)
    change = np.empty(len(w), dtype=bool)
    change[0] = True
    change[1:] = (w[1:] != w[:-1]) | (key[1:] != key[:-1])
    return np.flatnonzero(change)


def parent_index(w: npt.NDArray[np.int64], cells: U64, res: int) -> npt.NDArray[np.intp]:
    """Return, for cells sorted by (w, cell), the row of each cell's parent at ``res``.

    Notes
    -----
    H3 indexes order cells by (base cell, digit 1, digit 2, ...), so sorting by index keeps all
    descendants of a parent contiguous; the parents of a sorted level are therefore the runs of
    equal (w, parent), numbered in order, and the coarser level of an exact roll-up lists them in
    the same order. No search is needed.
    """
    parents = cells_to_parent(cells, res)
    if len(w) == 0:
        return np.zeros(0, dtype=np.intp)
    change = np.empty(len(w), dtype=bool)
    change[0] = True
    change[1:] = (w[1:] != w[:-1]) | (parents[1:] != parents[:-1])
    return np.cumsum(change) - 1


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
    ``w``, ``res``, ``cell``, ``devices`` sorted by (res, w, cell), all windows at once. A parent's
    count is the sum of its children's (each device is in exactly one child), so it is exact.
    """
    counts = counts.sort("w", "cell")
    w = counts["w"].to_numpy().astype(np.int64)
    cells = counts["cell"].to_numpy().astype(np.uint64)
    dev = counts["devices"].to_numpy().astype(np.int64)
    levels = [(base_res, w, cells, dev)]
    for res in range(base_res - 1, min_res - 1, -1):
        parents = cells_to_parent(cells, res)
        starts = _run_starts(w, parents)
        agg = np.add.reduceat(dev, starts) if len(dev) else dev
        levels.append((res, w[starts], parents[starts], agg))
    frame = pl.concat(
        [
            pl.DataFrame(
                {
                    "w": lw,
                    "res": pl.Series(np.full(len(lw), r, dtype=np.int8)),
                    "cell": pl.Series(lc, dtype=pl.UInt64),
                    "devices": ld,
                }
            )
            for r, lw, lc, ld in reversed(levels)
        ]
    )
    return frame
