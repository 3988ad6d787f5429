"""Windows, one position per device per window, counts per cell, exact roll-up.

This is the aggregation kernel shared by the local engine (``heatmap ingest``) and the Dask engine
(``heatmap aggregate --engine dask``). Everything here is a pure function of DataFrames / arrays.

A device's *position* in a window is its latest ping there. Ties on ``ts`` are broken by the
larger cell, so the rule is associative and commutative: reducing chunks separately and then
reducing the union gives the same answer as reducing everything at once, whatever the row order.

The work is split so that only final positions are ever H3-indexed:

1. :func:`latest_candidates` keeps, per chunk, each (window, device)'s rows at its latest ``ts``
   (coordinates still raw);
2. :class:`Candidates` gathers the chunks' candidates and reduces them again as they pile up
   (a device's window split across chunks leaves one candidate per chunk);
3. :func:`index_candidates` indexes what is left, once, split over worker threads, and breaks
   the rare ties on ``ts`` by the larger cell.

With a ping every 45 s and 5-minute windows about one ping in seven is indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap._jit import kernel, readonly, warms, worth
from heatmap.cellindex import latlng_to_cells

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
Mapper = Callable[[Callable[[slice], U64], list[slice]], Iterator[U64]]
"""``map``-like: ``Executor.map`` to index slices on worker threads, or the builtin ``map``."""

# H3 index bit layout (h3geo.org/docs/library/index/cell): 4 bits of resolution at 52..55,
# then 15 digits of 3 bits each, digit 1 at bits 42..44 and digit 15 at bits 0..2.
_RES_SHIFT = np.uint64(52)
_RES_MASK = np.uint64(0xF) << _RES_SHIFT
_DENSE_LIMIT = 1 << 24  # (window, device) slots of the dense table before falling back
_INDEX_SLICE = 1 << 18  # most positions per indexing task
_INDEX_MIN_SLICE = 1 << 14
_NEVER = np.iinfo(np.int64).min


def _device_col(frame: pl.DataFrame) -> str:
    for name in ("device_id", "device_code"):
        if name in frame.columns:
            return name
    return "device"


def _dense_codes(frame: pl.DataFrame, dev: str, w: I64) -> tuple[U32, int, int] | None:
    """Return the codes of ``dev`` (Categorical, or a file's ``device_code``), the lowest
    window and the device count.

    A (window, device) pair then has the dense key ``(w - w_min) * devices + code``; ``None``
    for other ids or a key range too large to allocate a table for.
    """
    kind = frame.schema[dev]
    if not (isinstance(kind, pl.Categorical) or kind == pl.UInt32) or not len(w):
        return None
    codes = frame[dev].to_physical().to_numpy().astype(np.uint32, copy=False)
    w0 = int(w.min())
    n_dev = int(codes.max()) + 1
    if (int(w.max()) - w0 + 1) * n_dev > max(_DENSE_LIMIT, 2 * len(w)):
        return None
    return codes, w0, n_dev


@kernel
def _latest_dense(w: I64, codes: U32, ts: I64, w0: int, n_dev: int) -> npt.NDArray[np.intp]:
    """Rows at their (w, code) group's latest ``ts``, ties all kept, ordered by window (then
    by row): one table of latest times, one pass keeping rows, a counting sort of those."""
    span = w.max() - w0 + 1
    best = np.full(span * n_dev, _NEVER, dtype=np.int64)
    for i in range(ts.size):
        k = (w[i] - w0) * n_dev + codes[i]
        if ts[i] > best[k]:
            best[k] = ts[i]
    kept = np.empty(ts.size, dtype=np.intp)
    n = 0
    starts = np.zeros(span + 1, dtype=np.intp)
    for i in range(ts.size):
        if ts[i] == best[(w[i] - w0) * n_dev + codes[i]]:
            kept[n] = i
            n += 1
            starts[w[i] - w0 + 1] += 1
    for j in range(span):
        starts[j + 1] += starts[j]
    rows = np.empty(n, dtype=np.intp)
    for i in kept[:n]:
        rows[starts[w[i] - w0]] = i
        starts[w[i] - w0] += 1
    return rows


@kernel
def _dense_has_ties(w: I64, codes: U32, w0: int, n_dev: int) -> bool:
    """Whether some (w, code) pair occurs twice."""
    seen = np.zeros((w.max() - w0 + 1) * n_dev, dtype=np.bool_)
    for i in range(w.size):
        k = (w[i] - w0) * n_dev + codes[i]
        if seen[k]:
            return True
        seen[k] = True
    return False


@warms
def _warm() -> None:
    one, code = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.uint32)
    _latest_dense(*readonly(one, code, one), 0, 1)
    _dense_has_ties(*readonly(one, code), 0, 1)
    _distinct_windows(*readonly(one), 1 << 20)


def _latest_rows(frame: pl.DataFrame, dev: str, w: I64) -> npt.NDArray[np.intp]:
    """Return the rows at their (w, device) group's latest ``ts`` (tied rows all kept),
    ordered by window, then by row.

    Dictionary-encoded (Categorical) ids take a compiled pass over dense (w, code) keys.
    Other ids (or a key range too large) are grouped by polars on the exact (w, device) pair.
    """
    ts = frame["ts"].to_numpy()
    w = w.astype(np.int64, copy=False)
    dense = _dense_codes(frame, dev, w) if worth(len(ts)) else None
    if dense is not None:
        return _latest_dense(*readonly(w, dense[0], ts), dense[1], dense[2])
    keyed = pl.DataFrame({"w": w, "d": frame[dev], "ts": ts}).with_row_index("i")
    latest = keyed.filter(pl.col("ts") == pl.col("ts").max().over("w", "d"))
    rows = latest["i"].to_numpy().astype(np.intp)
    return rows[np.argsort(w[rows], kind="stable")]


def _has_ties(frame: pl.DataFrame, dev: str) -> bool:
    """Return whether some (w, device) pair has more than one row."""
    w = frame["w"].to_numpy()
    dense = _dense_codes(frame, dev, w) if worth(len(w)) else None
    if dense is not None:
        return bool(
            _dense_has_ties(*readonly(w.astype(np.int64, copy=False), dense[0]), *dense[1:])
        )
    return bool(frame.select(pl.struct("w", dev).n_unique()).item() < frame.height)


def latest_candidates(pings: pl.DataFrame, window_s: int) -> pl.DataFrame:
    """Return each (window, device)'s pings at its latest ``ts``: the position candidates.

    Parameters
    ----------
    pings
        Columns ``device_id`` (str or Categorical) or ``device`` (int64), ``ts`` (int64 epoch
        s), ``lat``, ``lng``.
    window_s
        Window length in seconds; window number ``w = ts // window_s``.

    Returns
    -------
    DataFrame
        Columns ``w``, the device column as given, ``ts``, ``lat``, ``lng``, ordered by ``w``;
        usually one row per (w, device), more where pings tie on the latest ``ts`` (settled by
        :func:`index_candidates`).
    """
    dev = _device_col(pings)
    if not pings.height:
        return pings.select(dev, "ts", "lat", "lng").insert_column(0, pl.Series("w", [], pl.Int64))
    w = pings["ts"].to_numpy() // window_s
    rows = _latest_rows(pings, dev, w)
    picked = pings.select(dev, "ts", "lat", "lng")[rows]
    return picked.insert_column(0, pl.Series("w", w[rows]))


def reduce_candidates(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Merge candidate frames (of any chunks) into the candidates of their union, by ``w``."""
    frames = [f for f in frames if f.height]
    if len(frames) <= 1:
        return frames[0] if frames else pl.DataFrame()
    both = pl.concat(frames, how="vertical_relaxed", rechunk=True)
    return both[_latest_rows(both, _device_col(both), both["w"].to_numpy())]


class Candidates:
    """Position candidates of a stream of chunks, held until their windows look complete.

    ``add`` takes one chunk's candidates. ``ripe(w)`` hands back the candidates of the windows
    before ``w`` as they are (a window split across chunks keeps a set per chunk, which
    :func:`index_candidates` reduces on whichever thread indexes them): with time-ordered input
    (the usual case) no later chunk reaches them, so they can be indexed while the rest of the
    input is still being read. If a later
    chunk does reach such a window, the window just gets a second set of positions, which
    :func:`merge_positions` settles by the same rule. ``rest()`` returns what is left.
    Candidates are also reduced whenever ``bound`` new rows pile up, so memory stays near the
    number of distinct (window, device) pairs whatever the order of the input. Every part is
    ordered by ``w`` (as both producers make them), so splitting one at a window is a slice.
    """

    def __init__(self, bound: int = 1 << 23) -> None:
        self.bound = bound
        self._parts: list[pl.DataFrame] = []
        self._fresh = 0

    def add(self, frame: pl.DataFrame) -> None:
        """Add one chunk's candidates (from :func:`latest_candidates`)."""
        if not frame.height:
            return
        self._parts.append(frame)
        self._fresh += frame.height
        if self._fresh >= self.bound:
            self._parts = [reduce_candidates(self._parts)]
            self._fresh = 0

    def ripe(self, before: int) -> pl.DataFrame:
        """Remove and return the candidates of windows ``w < before`` (not reduced: cheap on
        the merging thread; :func:`index_candidates` reduces them)."""
        cuts = [int(np.searchsorted(p["w"].to_numpy(), before)) for p in self._parts]
        parts = self._parts
        self._parts = [p[k:] for p, k in zip(parts, cuts, strict=True) if k < p.height]
        done = [p[:k] for p, k in zip(parts, cuts, strict=True) if k]
        return pl.concat(done, how="vertical_relaxed") if done else pl.DataFrame()

    def rest(self) -> pl.DataFrame:
        """Remove and return all remaining candidates, reduced."""
        parts, self._parts = self._parts, []
        return reduce_candidates(parts)


def index_candidates(cands: pl.DataFrame, res: int, mapper: Mapper = map) -> pl.DataFrame:
    """Index candidates at ``res`` and keep one position per (w, device).

    Candidates of one (w, device) from several chunks are first reduced to the latest ``ts``.
    Slices of ``_INDEX_SLICE`` rows are indexed through ``mapper`` (the compiled indexer
    releases the GIL, so an executor's ``map`` uses every core). Where candidates tie on
    ``ts`` the larger cell wins, which makes the rule independent of row order.
    """
    dev = _device_col(cands)
    tied = _has_ties(cands, dev)
    if tied:
        cands = cands[_latest_rows(cands, dev, cands["w"].to_numpy())]
    lat, lng = cands["lat"].to_numpy(), cands["lng"].to_numpy()

    to_cells = latlng_to_cells if worth(len(lat)) else _h3py_cells

    def index(part: slice) -> U64:
        return to_cells(lat[part], lng[part], res)  # validated coordinates

    # Slices small enough for every worker to get one, large enough to amortise each call.
    step = max(_INDEX_MIN_SLICE, min(_INDEX_SLICE, -(-len(lat) // 8)))
    parts = [slice(i, i + step) for i in range(0, len(lat), step)]
    cells = np.concatenate(list(mapper(index, parts))) if parts else np.zeros(0, np.uint64)
    out = cands.select("w", dev, "ts").with_columns(cell=pl.Series(cells, dtype=pl.UInt64))
    if tied and _has_ties(out, dev):  # pairs left tied on ts (none if none were paired)
        out = out.filter(pl.col("cell") == pl.col("cell").max().over("w", dev)).unique(
            subset=["w", dev], keep="any"
        )
    return out


def _h3py_cells(lat: npt.NDArray[np.float64], lng: npt.NDArray[np.float64], res: int) -> U64:
    """Index a few points with h3-py (the reference), where loading the compiled indexer
    would cost more than the points."""
    from h3.api import basic_int

    to_cell = basic_int.latlng_to_cell
    pts = zip(lat.tolist(), lng.tolist(), strict=True)
    return np.fromiter((to_cell(y, x, res) for y, x in pts), dtype=np.uint64, count=len(lat))


def pings_to_positions(pings: pl.DataFrame, window_s: int, res: int) -> pl.DataFrame:
    """Reduce pings to each device's position (latest ping) per window, indexed at ``res``.

    Returns columns ``w``, the device column as given, ``ts``, ``cell`` (uint64), one row per
    (w, device). Only the candidates of :func:`latest_candidates` are indexed.
    """
    if not pings.height:
        return empty_positions()
    return index_candidates(latest_candidates(pings, window_s), res)


def slots_to_windows(slots: pl.DataFrame, slot_s: int, window_s: int) -> pl.DataFrame:
    """Return per-window positions from per-slot ones (``w`` = slot number ``ts // slot_s``).

    ``slot_s`` divides ``window_s``, so each slot lies in one window and a device's latest ping
    in a window is the latest of its slots there (ties to the larger cell, as everywhere).
    """
    if not slots.height:
        return slots
    windows = slots.with_columns(w=pl.col("w") * slot_s // window_s)
    return windows.sort(["w", "device", "ts", "cell"]).unique(
        subset=["w", "device"], keep="last", maintain_order=True
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


def windows_of(frame: pl.DataFrame) -> list[int]:
    """Return the distinct windows ``w`` of a frame, ascending.

    Windows of one ingest span a narrow range, so marking them in a table over that range
    (no sort) beats hashing millions of rows; a wide range falls back to ``np.unique``.
    """
    col = frame["w"]
    if not col.len():
        return []
    w = col.to_numpy()
    if worth(len(w)):
        return _distinct_windows(*readonly(w), max(1 << 20, len(w))).tolist()  # type: ignore[no-any-return]
    lo, hi = int(w.min()), int(w.max())
    if hi - lo > max(1 << 20, len(w)):
        return [int(x) for x in np.unique(w).tolist()]
    seen = np.zeros(hi - lo + 1, dtype=bool)
    seen[w - lo] = True
    return (np.flatnonzero(seen) + lo).tolist()


@kernel
def _distinct_windows(w: I64, limit: int) -> I64:
    """The distinct values of ``w`` ascending: one pass for the range, one marking them in
    a table over it (``np.unique`` when the range is wider than ``limit``)."""
    lo = hi = w[0]
    for x in w:
        lo = min(lo, x)
        hi = max(hi, x)
    if hi - lo > limit:
        return np.unique(w)
    seen = np.zeros(hi - lo + 1, dtype=np.bool_)
    for x in w:
        seen[x - lo] = True
    out = np.empty(seen.sum(), dtype=np.int64)
    n = 0
    for i in range(seen.size):
        if seen[i]:
            out[n] = lo + i
            n += 1
    return out


def empty_positions() -> pl.DataFrame:
    """Return an empty positions frame with the right schema."""
    return pl.DataFrame(
        schema={"w": pl.Int64, "device": pl.Int64, "ts": pl.Int64, "cell": pl.UInt64}
    )


def cells_to_counts(cells: pl.DataFrame) -> pl.DataFrame:
    """Count devices per (w, cell): columns ``w``, ``cell`` (uint64), ``devices``, sorted.

    Cells of one resolution are packed with their window into one 64-bit key (see
    :func:`_pack`) so that a single ``np.unique`` sorts and counts; other inputs take a
    two-column sort.
    """
    w = cells["w"].to_numpy().astype(np.int64)
    c = cells["cell"].to_numpy().astype(np.uint64)
    packed = _pack(w, c)
    if packed is not None:
        key, unpack = packed
        uniq, devices = np.unique(key, return_counts=True)
        w_out, c_out = unpack(uniq)
    else:
        ordered = cells.select("w", "cell").sort("w", "cell")
        w = ordered["w"].to_numpy()
        c = ordered["cell"].to_numpy().astype(np.uint64)
        starts = _run_starts(w, c)
        devices = np.diff(np.append(starts, len(w)))
        w_out, c_out = w[starts], c[starts]
    return pl.DataFrame(
        {
            "w": w_out.astype(np.int64),
            "cell": pl.Series(c_out, dtype=pl.UInt64),
            "devices": devices.astype(np.int64),
        }
    )


def _pack(w: I64, cells: U64) -> tuple[U64, Callable[[U64], tuple[I64, U64]]] | None:
    """Pack (w, cell) into one uint64 whose order is the (w, cell) order, with its inverse.

    A resolution-``r`` cell carries information in its base cell and ``r`` digits only: bits
    ``45 - 3r`` to ``51``, ``7 + 3r`` bits; the other bits (mode, resolution, unused digits)
    are the same for every cell of that resolution. The window offset goes above them. Returns
    ``None`` for mixed resolutions or a window range too wide for the spare bits.
    """
    if not len(cells):
        return None
    res = int((cells[0] & _RES_MASK) >> _RES_SHIFT)
    shift = 45 - 3 * res
    width = 7 + 3 * res
    w0 = int(w.min())
    if int(w.max()) - w0 >= 1 << (64 - width) or (cell_resolution(cells) != res).any():
        return None
    mask = np.uint64((1 << width) - 1)
    template = cells[0] & ~(mask << np.uint64(shift))
    key = ((w - w0).astype(np.uint64) << np.uint64(width)) | ((cells >> np.uint64(shift)) & mask)

    def unpack(k: U64) -> tuple[I64, U64]:
        return (k >> np.uint64(width)).astype(np.int64) + w0, (
            (k & mask) << np.uint64(shift)
        ) | template

    return key, unpack


def _run_starts(w: npt.NDArray[np.int64], key: U64) -> npt.NDArray[np.intp]:
    """Return the first index of each run of equal (w, key) in arrays sorted by (w, key)."""
    if len(w) == 0:
        return np.zeros(0, dtype=np.intp)
    change = np.empty(len(w), dtype=bool)
    change[0] = True
    change[1:] = (w[1:] != w[:-1]) | (key[1:] != key[:-1])
    return np.flatnonzero(change)


def strictly_sorted(*keys: npt.NDArray[np.integer]) -> bool:
    """Return whether the rows of aligned key arrays strictly increase (lexicographically)."""
    if len(keys[0]) < 2:
        return True
    up = np.zeros(len(keys[0]) - 1, dtype=bool)
    tied = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        a, b = key[:-1], key[1:]
        up |= tied & (b > a)
        tied &= b == a
    return bool(up.all())


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
    w = counts["w"].to_numpy().astype(np.int64)
    cells = counts["cell"].to_numpy().astype(np.uint64)
    if not strictly_sorted(w, cells):  # cells_to_counts returns them sorted already
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
