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

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from heatmap._jit import kernel, readonly, warms
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
    ts, ok = _seconds_if_valid(*readonly(ts, lat, lng), newest)
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
) -> pl.DataFrame:
    """Validate one chunk read by arrow (Parquet or CSV) like :func:`frame_to_pings`.

    Text numbers are cast by arrow and dictionary-encoded ids checked once per distinct id, so
    that a clean chunk takes the numpy fast path.
    """
    cols = resolve_columns(data.schema.names)
    data = _ids_as_dictionary(data, cols["device_id"])
    frame = pl.from_arrow(_numbers_as_numbers(data, cols))
    assert isinstance(frame, pl.DataFrame)
    checked = _ids_look_valid(data, cols["device_id"])
    return frame_to_pings(
        frame,
        opts,
        rejects,
        first_row=first_row,
        source=source,
        ids_checked=checked,
        skipped=skipped,
    )


_NUMBER_TYPES = {"ts": pa.int64(), "lat": pa.float64(), "lng": pa.float64()}


def _numbers_as_numbers(
    data: pa.RecordBatch | pa.Table, cols: dict[str, str]
) -> pa.RecordBatch | pa.Table:
    """Convert text ``ts``, ``lat``, ``lng`` columns (CSV) with arrow's strict casts.

    The common case (plain integers and decimals) then takes the numeric fast path; if any
    value does not convert (spaces, ISO-8601 times, junk), the text is kept and the general
    path finds each bad row's reason.
    """
    out = data
    for canon, typ in _NUMBER_TYPES.items():
        name = cols[canon]
        i = out.schema.get_field_index(name)
        if not pa.types.is_string(out.schema.field(i).type):
            continue
        try:
            col = pc.cast(out.column(i), typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return data
        out = out.set_column(i, name, col)
    return out


def _ids_as_dictionary(data: pa.RecordBatch | pa.Table, name: str) -> pa.RecordBatch | pa.Table:
    """Dictionary-encode text ids (CSV): grouping then works on small integer codes and only
    the distinct ids are ever checked and hashed (see ``aggregate.latest_candidates``).
    Encoding after parsing costs a quarter of what arrow's CSV dictionary conversion does."""
    i = data.schema.get_field_index(name)
    if not pa.types.is_string(data.schema.field(i).type):
        return data
    return data.set_column(i, name, pc.dictionary_encode(data.column(i)))


def _ids_look_valid(data: pa.RecordBatch | pa.Table, name: str) -> bool:
    """Return whether a dictionary-encoded id column has no null and only ids of 1-256 bytes.

    Checks the dictionaries (the distinct ids), not the rows; ``False`` just means the rows
    are checked one by one.
    """
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
