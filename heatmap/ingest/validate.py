"""Validate one chunk into canonical WGS-84 pings: a polars frame (:func:`frame_to_pings`) or an
arrow batch or table (:func:`arrow_to_pings`, which casts first so a clean chunk is fast).

A clean numeric chunk takes one compiled pass (:func:`_seconds_if_valid`); otherwise the general
path types every column, keeps the valid rows and finds each bad row's reason, running on the
bad rows only. Timestamps are epoch seconds or milliseconds (above 1e11) or ISO-8601 (UTC if no
offset); other coordinate systems are converted to WGS-84 last.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from heatmap._arrow import values
from heatmap._jit import kernel, readonly, warms, worth
from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.options import COLUMNS, ParseOptions, Rejects, resolve_columns

_EPOCH_MS = 1e11  # larger numeric timestamps are milliseconds (1e11 s is in the year 5138)
_EPOCH_MS_INT = int(_EPOCH_MS)
_ISO_FORMATS = (
    ("%Y-%m-%d %H:%M:%S%.f%z", True),
    ("%Y-%m-%d %H:%M:%S%z", True),
    ("%Y-%m-%d %H:%M%z", True),
    ("%Y-%m-%d %H:%M:%S%.f", False),
    ("%Y-%m-%d %H:%M:%S", False),
    ("%Y-%m-%d %H:%M", False),
)


def _parse_ts(values: pl.Series) -> pl.Series:
    """Return epoch seconds (Int64, null where unparseable) from numbers or ISO-8601 strings.

    Numbers above 1e11 are milliseconds. ISO-8601 without an offset is taken as UTC.
    """
    if isinstance(values.dtype, pl.Datetime):
        return values.dt.epoch("s").cast(pl.Int64)
    if values.dtype.is_integer():
        # The common case (epoch seconds as integers) costs one pass and no float round trip.
        v = values.cast(pl.Int64)
        big = v.abs() >= int(_EPOCH_MS)
        return (
            v if not big.any() else pl.select(pl.when(big).then(v // 1000).otherwise(v)).to_series()
        )
    if values.dtype.is_numeric():
        num = values.cast(pl.Float64)
    else:
        text = values.cast(pl.String).str.strip_chars()
        num = text.cast(pl.Float64, strict=False)
        todo = num.is_null() & text.is_not_null()
        if todo.any():
            # Only the non-numeric rows go through the (slower) ISO-8601 layouts.
            iso = text.filter(todo).str.replace("T", " ", literal=True)
            iso = iso.str.replace(r"[Zz]$", "+00:00")
            parsed = pl.select(
                pl.coalesce(
                    iso.str.to_datetime(fmt, strict=False, time_unit="ms", time_zone="UTC")
                    if aware
                    else iso.str.to_datetime(
                        fmt, strict=False, time_unit="ms"
                    ).dt.replace_time_zone("UTC")
                    for fmt, aware in _ISO_FORMATS
                )
            ).to_series()
            secs = parsed.dt.epoch("ms").cast(pl.Float64) / 1000.0
            num = num.scatter(todo.arg_true(), secs)
    num = pl.select(pl.when(num.abs() >= _EPOCH_MS).then(num / 1000.0).otherwise(num)).to_series()
    return pl.select(
        pl.when(num.is_finite()).then(num.floor()).cast(pl.Int64, strict=False)
    ).to_series()


def _coord(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric():
        return col.cast(pl.Float64)
    return col.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _reason(raw: pl.Expr, val: pl.Expr, name: str, lo: float, hi: float) -> pl.Expr:
    blank = raw.is_null() | (raw.cast(pl.String).str.strip_chars() == "")
    return (
        pl.when(blank)
        .then(pl.lit(f"{name} missing"))
        .when(val.is_null())
        .then(pl.lit(f"{name} not a number"))
        .when(val.is_nan())
        .then(pl.lit(f"{name} is NaN"))
        .when((val < lo) | (val > hi))
        .then(pl.lit(f"{name} out of range [{lo:g}, {hi:g}]"))
    )


def frame_to_pings(
    frame: pl.DataFrame,
    opts: ParseOptions,
    rejects: Rejects,
    *,
    first_row: int = 1,
    source: str = "input",
    ids_checked: bool = False,
    skipped: Sequence[int] = (),
) -> pl.DataFrame:
    """Validate one chunk and return the canonical pings (WGS-84); record rejected rows.

    ``first_row`` is the 1-based data-row number of the chunk's first row; ``skipped`` the
    (ascending) data-row numbers from there on of lines the reader dropped before this frame
    (wrong number of fields), so that later rows keep their own numbers. Device ids are opaque
    strings (not trimmed); an empty one is rejected. ``ids_checked`` says the caller has
    already found every id present and 1-256 bytes long.
    """
    cols = resolve_columns(frame.columns)
    now = time.time() if opts.now is None else opts.now
    newest = int(now) + opts.max_future_s
    fast = _typed_and_valid(frame, cols, newest, ids_checked)
    if fast is not None:
        return _to_wgs84(fast, opts)
    schema = frame.schema
    dev_dtype = schema[cols["device_id"]]
    categorical = isinstance(dev_dtype, pl.Categorical)
    typed = frame.select(
        device_id=pl.col(cols["device_id"])
        if categorical
        else pl.col(cols["device_id"]).cast(pl.String),
        ts=_parse_ts(frame[cols["ts"]]),
        lat=_coord(pl.col(cols["lat"]), schema[cols["lat"]]),
        lng=_coord(pl.col(cols["lng"]), schema[cols["lng"]]),
    )
    dev, ts, lat, lng = pl.col("device_id"), pl.col("ts"), pl.col("lat"), pl.col("lng")
    if categorical:
        # Validate the distinct ids once, then flag rows by their (integer) code.
        uniq = typed["device_id"].unique().drop_nulls()
        good = uniq.filter(uniq.cast(pl.String).str.len_bytes().is_between(1, 256))
        dev_ok = dev.is_in(good.implode()) if good.len() < uniq.len() else dev.is_not_null()
        dev_text = dev.cast(pl.String)
    else:
        dev_ok = dev.str.len_bytes().is_between(1, 256)
        dev_text = dev
    ok = (
        dev_ok
        & ts.is_between(0, newest)
        & lat.is_between(-90.0, 90.0)
        & lng.is_between(-180.0, 180.0)
    ).fill_null(False)
    mask = typed.select(ok).to_series()
    if not mask.all():
        # The slow path (reasons per row) runs on the bad rows only.
        raw = frame.filter(~mask).select(
            _ts_raw=pl.col(cols["ts"]), _lat_raw=pl.col(cols["lat"]), _lng_raw=pl.col(cols["lng"])
        )
        local = np.flatnonzero(~mask.to_numpy())
        rows = pl.Series("row", _row_numbers(first_row, local, skipped))
        bad = pl.concat([typed.filter(~mask).with_columns(rows), raw], how="horizontal")
        ts_raw = pl.col("_ts_raw")
        ts_blank = ts_raw.is_null() | (ts_raw.cast(pl.String).str.strip_chars() == "")
        empty = dev_text.is_null() & ts_raw.is_null()
        empty &= pl.col("_lat_raw").is_null() & pl.col("_lng_raw").is_null()
        reason = pl.coalesce(
            pl.when(empty).then(pl.lit("empty row")),
            pl.when(dev_text.is_null() | (dev_text == "")).then(pl.lit("device_id empty")),
            pl.when(dev_text.str.len_bytes() > 256).then(pl.lit("device_id longer than 256 bytes")),
            pl.when(ts_blank).then(pl.lit("ts missing")),
            pl.when(ts.is_null()).then(pl.lit("ts unparseable")),
            pl.when(ts < 0).then(pl.lit("ts before 1970")),
            pl.when(ts > newest).then(pl.lit(f"ts more than {opts.max_future_s} s in the future")),
            _reason(pl.col("_lat_raw"), lat, "lat", -90.0, 90.0),
            _reason(pl.col("_lng_raw"), lng, "lng", -180.0, 180.0),
            pl.lit("invalid row"),
        )
        bad = bad.select("row", reason=reason)
        if opts.strict:
            row, why = bad.row(0)
            raise BadInput(f"{source}: row {row}: {why} (--strict: nothing was written)")
        rejects.add(bad["row"].to_list(), bad["reason"].to_list())
        typed = typed.filter(mask)
    return _to_wgs84(typed, opts)


@kernel
def _seconds_if_valid(
    ts: npt.NDArray[np.int64],
    lat: npt.NDArray[np.float64],
    lng: npt.NDArray[np.float64],
    newest: int,
) -> tuple[npt.NDArray[np.int64], bool]:
    """One pass over a numeric chunk: epoch seconds (milliseconds divided), and whether every
    row is valid (coordinates in range, not NaN; 0 <= ts <= ``newest``). If not, the general
    path finds each bad row's reason."""
    out = np.empty_like(ts)
    ok = True
    for i in range(ts.size):
        t = ts[i]
        t = t // 1000 if abs(t) >= _EPOCH_MS_INT else t
        la, ln = lat[i], lng[i]
        # Written so that NaN fails the comparisons; no branch, so the loop vectorises.
        ok &= (la >= -90.0) & (la <= 90.0) & (ln >= -180.0) & (ln <= 180.0)
        ok &= (t >= 0) & (t <= newest)
        out[i] = t
    return out, ok


def _seconds_if_valid_np(
    ts: npt.NDArray[np.int64],
    lat: npt.NDArray[np.float64],
    lng: npt.NDArray[np.float64],
    newest: int,
) -> tuple[npt.NDArray[np.int64], bool]:
    """:func:`_seconds_if_valid` in numpy, for chunks too small to load numba for."""
    out = np.where(np.abs(ts) >= _EPOCH_MS_INT, ts // 1000, ts)
    ok = (lat >= -90.0) & (lat <= 90.0) & (lng >= -180.0) & (lng <= 180.0)
    ok &= (out >= 0) & (out <= newest)
    return out, bool(ok.all())


def _checked_seconds(
    ts: npt.NDArray[np.int64],
    lat: npt.NDArray[np.float64],
    lng: npt.NDArray[np.float64],
    newest: int,
) -> tuple[npt.NDArray[np.int64], bool]:
    """:func:`_seconds_if_valid`, compiled, or in numpy while numba is not worth loading."""
    if worth(len(ts)):
        return _seconds_if_valid(*readonly(ts, lat, lng), newest)  # type: ignore[no-any-return]
    return _seconds_if_valid_np(ts, lat, lng, newest)


@warms
def _warm() -> None:
    one = np.zeros(1)
    _seconds_if_valid(*readonly(np.zeros(1, dtype=np.int64), one, one), 1)


def _row_numbers(
    first_row: int, local: npt.NDArray[np.intp], skipped: Sequence[int]
) -> npt.NDArray[np.int64]:
    """Data-row numbers of a chunk's rows at positions ``local``, around skipped lines.

    Without skipped lines, row ``i`` of the chunk is ``first_row + i``. A skipped line ``s``
    moves every row from ``s`` on one further: the ``j``-th skipped line (from 0) is passed by
    the rows whose unshifted number is at least ``s - j``.
    """
    base = first_row + np.asarray(local, dtype=np.int64)
    if not len(skipped):
        return base
    s = np.asarray(skipped, dtype=np.int64)
    return base + np.searchsorted(s - np.arange(len(s)), base, side="right")


def _typed_and_valid(
    frame: pl.DataFrame, cols: dict[str, str], newest: int, ids_checked: bool
) -> pl.DataFrame | None:
    """The common case in numpy: numeric columns, dictionary-encoded ids, no null, every row
    valid. Returns the canonical frame, or ``None`` to take the general path (which finds the
    reasons)."""
    d, t, la, ln = (frame[cols[c]] for c in COLUMNS)
    numeric = la.dtype.is_float() and ln.dtype.is_float() and t.dtype.is_integer()
    if not numeric or not isinstance(d.dtype, pl.Categorical):
        return None
    if d.null_count() or t.null_count() or la.null_count() or ln.null_count():
        return None
    ts = t.to_numpy().astype(np.int64, copy=False)
    lat = la.to_numpy().astype(np.float64, copy=False)
    lng = ln.to_numpy().astype(np.float64, copy=False)
    ts, ok = _checked_seconds(ts, lat, lng, newest)
    if not ok:
        return None
    if not ids_checked and not d.unique().cast(pl.String).str.len_bytes().is_between(1, 256).all():
        return None
    lat_s, lng_s = la.cast(pl.Float64).alias("lat"), ln.cast(pl.Float64).alias("lng")
    return pl.DataFrame([d.alias("device_id"), pl.Series("ts", ts), lat_s, lng_s])


def _to_wgs84(typed: pl.DataFrame, opts: ParseOptions) -> pl.DataFrame:
    if opts.crs != "wgs84" and typed.height:
        from heatmap.crs import to_wgs84

        la, ln = to_wgs84(typed["lat"].to_numpy(), typed["lng"].to_numpy(), opts.crs)
        typed = typed.with_columns(lat=pl.Series(np.asarray(la)), lng=pl.Series(np.asarray(ln)))
    return typed


def arrow_to_pings(
    data: pa.RecordBatch | pa.Table,
    opts: ParseOptions,
    rejects: Rejects,
    *,
    first_row: int = 1,
    source: str = "input",
    skipped: Sequence[int] = (),
    codes: DeviceCodes | None = None,
) -> pl.DataFrame:
    """Validate one chunk read by arrow (Parquet, CSV, NDJSON) like :func:`frame_to_pings`.

    Columns are first brought to the canonical types with arrow (:func:`_canonical`): ids
    dictionary-encoded text, timestamps epoch seconds, coordinates float64, so that a clean
    chunk takes the compiled fast path; text that does not convert stays text for the general
    path, which names each bad row's reason.

    With ``codes`` (one file's :class:`DeviceCodes`), ids become the file's integer codes
    (column ``device_code``, uint32) instead of a ``device_id`` column: a clean chunk then
    never builds a dictionary or a Categorical.
    """
    cols = resolve_columns(data.schema.names)
    data = data.select([cols[c] for c in COLUMNS])
    if codes is not None:
        fast = _coded_if_valid(data, cols, opts, codes)
        if fast is not None:
            return fast
    data = _canonical(data, cols)
    if isinstance(data, pa.Table) and any(c.num_chunks > 1 for c in data.columns):
        # polars converts batch by batch, mapping a dictionary once per batch: one batch.
        data = data.combine_chunks()
    frame = pl.from_arrow(data)
    assert isinstance(frame, pl.DataFrame)
    checked = _ids_look_valid(data, cols["device_id"])
    pings = frame_to_pings(
        frame,
        opts,
        rejects,
        first_row=first_row,
        source=source,
        ids_checked=checked,
        skipped=skipped,
    )
    if codes is None:
        return pings
    ids = codes.encode(pings["device_id"].cast(pl.String).to_arrow())
    assert ids is not None  # valid rows only
    return pings.select(pl.Series("device_code", ids, pl.UInt32), "ts", "lat", "lng")


def _coded_if_valid(
    data: pa.RecordBatch | pa.Table, cols: dict[str, str], opts: ParseOptions, codes: DeviceCodes
) -> pl.DataFrame | None:
    """A clean chunk in one compiled pass per column: ids to codes, numbers checked. ``None``
    (nothing rejected yet) if some value is missing or invalid, or a column is text."""
    d, t, la, ln = (data.column(cols[c]) for c in COLUMNS)
    t, la, ln = (_as_number(c, n) for c, n in ((t, "ts"), (la, "lat"), (ln, "lng")))
    if (t.type, la.type, ln.type) != (pa.int64(), pa.float64(), pa.float64()):
        return None
    if t.null_count or la.null_count or ln.null_count:
        return None
    ts, lat, lng = (values(c) for c in (t, la, ln))
    now = time.time() if opts.now is None else opts.now
    newest = int(now) + opts.max_future_s
    ts, ok = _checked_seconds(ts, lat, lng, newest)
    if not ok:
        return None
    dev = codes.encode(d)
    if dev is None:
        return None
    frame = pl.DataFrame(
        [
            pl.Series("device_code", dev, pl.UInt32),
            pl.Series("ts", ts),
            pl.Series("lat", lat),
            pl.Series("lng", lng),
        ]
    )
    return _to_wgs84(frame, opts)


def _as_number(col: Column, canon: str) -> Column:
    new = _number(col, canon)
    return col if new is None else new


_NUMBER_TYPES = {"ts": pa.int64(), "lat": pa.float64(), "lng": pa.float64()}
_UNIT_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_FAR_FUTURE = 9 * 10**18  # a timestamp past year 5138 in seconds: rejected as in the future


def _text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _id_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _id_ok(t.value_type)
    return _text(t) or pa.types.is_integer(t) or pa.types.is_null(t)


def _ts_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _text(t.value_type)
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_timestamp(t)
        or _text(t)
        or pa.types.is_null(t)
    )


def _coord_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _text(t.value_type)
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or _text(t)
        or pa.types.is_null(t)
    )


_TYPE_RULES = {
    "device_id": (_id_ok, "text or integer ids"),
    "ts": (_ts_ok, "epoch seconds or milliseconds, a timestamp, or ISO-8601 text"),
    "lat": (_coord_ok, "numbers (degrees)"),
    "lng": (_coord_ok, "numbers (degrees)"),
}


def check_arrow_types(schema: pa.Schema, cols: dict[str, str], source: str) -> None:
    """Raise ``BadInput`` naming the first column whose type cannot be used, and its type."""
    for canon, (ok, want) in _TYPE_RULES.items():
        name = cols[canon]
        t = schema.field(name).type
        if not ok(t):
            label = name if name == canon else f"{name} ({canon})"
            raise BadInput(f"{source}: column {label!r} has type {t}; expected {want}")


def _canonical(data: pa.RecordBatch | pa.Table, cols: dict[str, str]) -> pa.RecordBatch | pa.Table:
    """Bring a chunk's columns to ids as dictionary text, ``ts`` as int64 epoch seconds (or
    milliseconds, told apart later), coordinates as float64, where every value converts.

    Text numbers (CSV) are cast with arrow's strict casts; if any value does not convert
    (spaces, ISO-8601 times, junk), that column stays text for the general path.
    """
    out = data
    for canon in COLUMNS:
        name = cols[canon]
        i = out.schema.get_field_index(name)
        col = out.column(i)
        new = _ids(col) if canon == "device_id" else _number(col, canon)
        if new is not None:
            out = out.set_column(i, name, new)
    return out


Column: TypeAlias = pa.Array | pa.ChunkedArray


def _ids(col: Column) -> Column | None:
    """Ids as dictionary-encoded text: grouping then works on small integer codes and only
    the distinct ids are ever checked and hashed (see ``aggregate.latest_candidates``).
    Integer ids become their decimal text, the same id as in a CSV file."""
    import pyarrow.compute as pc  # on first use: its import costs ~25 ms

    t = col.type
    if pa.types.is_dictionary(t):
        if pa.types.is_string(t.value_type):
            return None
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        return pa.chunked_array(
            [
                pa.DictionaryArray.from_arrays(c.indices, pc.cast(c.dictionary, pa.string()))
                for c in chunks
            ],
            pa.dictionary(pa.int32(), pa.string()),
        )
    if pa.types.is_integer(t):
        enc = pc.dictionary_encode(col)
        return _ids(enc)
    if _text(t):
        enc = pc.dictionary_encode(col if pa.types.is_string(t) else pc.cast(col, pa.string()))
        return _one_dictionary(enc)
    return None


def _one_dictionary(enc: Column) -> Column:
    """One dictionary array for the chunks of an encoded column: arrow encodes every chunk
    against one table, so they share the final dictionary, and polars would otherwise map
    it once per chunk."""
    if not isinstance(enc, pa.ChunkedArray) or enc.num_chunks < 2:
        return enc
    chunks = enc.chunks
    last = chunks[-1].dictionary
    if not all(c.dictionary.equals(last) for c in chunks[:-1]):
        return enc
    codes = pa.concat_arrays([c.indices for c in chunks])
    return pa.DictionaryArray.from_arrays(codes, last)


def _number(col: Column, canon: str) -> Column | None:
    t = col.type
    want = _NUMBER_TYPES[canon]
    if t == want:
        return None
    import pyarrow.compute as pc  # only when converting: its import costs ~25 ms

    if canon == "ts" and pa.types.is_timestamp(t):
        # An instant in any unit, with or without a zone (none is read as UTC): whole
        # seconds. Before 1970 stays negative (rejected), after year 5138 stays in the future.
        raw = pc.cast(col, pa.int64())
        secs = pc.divide(raw, _UNIT_S[t.unit]) if t.unit != "s" else raw
        secs = pc.if_else(pc.less(raw, 0), -1, secs)
        return pc.if_else(pc.greater_equal(secs, _EPOCH_MS_INT), _FAR_FUTURE, secs)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if canon == "ts" and not pa.types.is_integer(t) and not _text(t):
        return None  # float or decimal timestamps: the general path rounds them
    if not numeric and not pa.types.is_string(t):
        return None
    try:
        return pc.cast(col, want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _ids_look_valid(data: pa.RecordBatch | pa.Table, name: str) -> bool:
    """Return whether a dictionary-encoded id column has no null and only ids of 1-256 bytes.

    Checks the dictionaries (the distinct ids), not the rows; ``False`` just means the rows
    are checked one by one.
    """
    import pyarrow.compute as pc  # on first use: its import costs ~25 ms

    col = data.column(name)
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    for chunk in chunks:
        if not isinstance(chunk, pa.DictionaryArray) or chunk.null_count:
            return False
        if len(chunk.dictionary):
            lo, hi = pc.min_max(pc.binary_length(chunk.dictionary)).values()
            if lo.as_py() < 1 or hi.as_py() > 256:
                return False
    return True
