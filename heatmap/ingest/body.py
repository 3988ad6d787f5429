"""Request bodies (POST /api/v1/pings): CSV, NDJSON or a JSON array, parsed into a raw frame."""

from __future__ import annotations

import io

import orjson
import polars as pl

from heatmap.errors import BadInput

BODY_TYPES = ("text/csv", "application/x-ndjson", "application/json")


def body_to_frame(body: bytes, content_type: str, max_rows: int) -> pl.DataFrame:
    """Parse a request body (CSV, NDJSON or a JSON array of objects) into a raw frame.

    Values stay as sent (validated later, row by row). Raises ``BadInput`` for a body that
    cannot be parsed at all, and ``TooLarge`` above ``max_rows`` rows.
    """
    from heatmap.errors import TooLarge

    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind == "text/csv":
            text = body.decode("utf-8-sig")
            frame = pl.read_csv(io.StringIO(text), infer_schema=False, n_rows=max_rows + 1)
        elif kind in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
            records = [orjson.loads(line) for line in body.splitlines() if line.strip()]
            frame = _records_to_frame(records, max_rows)
        elif kind == "application/json":
            records = orjson.loads(body)
            if not isinstance(records, list):
                raise BadInput("JSON body must be an array of objects")
            frame = _records_to_frame(records, max_rows)
        else:
            raise BadInput(f"unsupported content type {kind!r}: use {', '.join(BODY_TYPES)}")
    except (UnicodeDecodeError, orjson.JSONDecodeError, pl.exceptions.PolarsError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"body is not valid {kind}: {first[:200]}") from exc
    if frame.height > max_rows:
        raise TooLarge(f"batch has more than {max_rows} rows")
    return frame


def _records_to_frame(records: list[object], max_rows: int) -> pl.DataFrame:
    from heatmap.errors import TooLarge

    if len(records) > max_rows:
        raise TooLarge(f"batch has {len(records)} rows, more than the limit of {max_rows}")
    cols: dict[str, list[object]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise BadInput(f"row {i + 1}: not a JSON object")
        for key in rec:
            cols.setdefault(str(key), [None] * i)
        for key, values in cols.items():
            v = rec.get(key)
            values.append(None if v is None else str(v))
    return pl.DataFrame({k: pl.Series(k, v, dtype=pl.String) for k, v in cols.items()})
