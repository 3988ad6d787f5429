"""NDJSON files (one JSON object a line, gzipped or not) as chunk tasks.

Blocks of whole lines (:func:`heatmap.ingest.lines.line_blocks`) are parsed by arrow on the
tasks' threads, value types inferred per block (numbers, text, ISO-8601 times alike), and go
through the same validation as every other format; row N is line N. A block that arrow
cannot take whole (a line that is not JSON, a blank line, a value whose type changes between
lines) is read line by line instead, every value as text: each bad line is rejected with its
reason and row, the others validated as usual. The file's columns are those of its first
block; other keys are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.json as pajson

from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.chunks import ChunkTask, _unreadable
from heatmap.ingest.lines import Block, line_blocks
from heatmap.ingest.options import ALIASES, COLUMNS, ParseOptions, Rejects, resolve_columns
from heatmap.ingest.validate import arrow_to_pings


def _ndjson_tasks(
    path: Path, compressed: bool, opts: ParseOptions, codes: DeviceCodes | None = None
) -> Iterator[ChunkTask]:
    first = True
    for block in line_blocks(path, compressed, opts.chunk_rows, skip_header=False):
        if first:
            _check_columns(path, block.read()[: 1 << 16].to_pybytes())
            first = False
        yield ChunkTask(block.first_row, block.lines, _block_loader(path, block, opts, codes))


def _check_columns(path: Path, block: bytes) -> None:
    """Fail the file at once if its first objects lack a column (not row by row)."""
    keys: dict[str, None] = {}
    for line in block.split(b"\n", 64)[:64]:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(str(k) for k in obj))
    if not keys:
        raise BadInput(f"{path}: not an NDJSON file (no JSON object on its first lines)")
    resolve_columns(list(keys))


def _block_loader(
    path: Path, block: Block, opts: ParseOptions, codes: DeviceCodes | None
) -> Callable[[Rejects], pl.DataFrame]:
    row = block.first_row

    def parse(data: pa.Buffer) -> tuple[pa.Table, list[int], list[str]]:
        table = _fast(data, block.lines)
        if table is not None:
            return table, [], []
        return _line_by_line(data.to_pybytes(), row)

    def load(rejects: Rejects) -> pl.DataFrame:
        table, skipped, reasons = block.parsed(parse)
        if skipped and opts.strict:
            raise BadInput(f"{path}: row {skipped[0]}: {reasons[0]} (--strict)")
        rejects.add(skipped, reasons)
        with _unreadable(path, row):
            return arrow_to_pings(
                _canonical_columns(table),
                opts,
                rejects,
                first_row=row,
                source=str(path),
                skipped=skipped,
                codes=codes,
            )

    return load


def _fast(block: pa.Buffer, lines: int) -> pa.Table | None:
    """The block parsed by arrow, or ``None`` if arrow cannot take it whole, row for line."""
    raw = memoryview(block)
    if raw[:1] == b"\n" or bytes(raw).find(b"\n\n") >= 0:
        return None  # blank lines: arrow would skip them and shift the rows after
    try:
        table = pajson.read_json(
            pa.BufferReader(block),
            read_options=pajson.ReadOptions(use_threads=False, block_size=block.size + 1),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == lines else None


def _line_by_line(block: bytes, row: int) -> tuple[pa.Table, list[int], list[str]]:
    """Read a block a line at a time: its objects with every value as text, and the rows of
    lines that are not objects with their reasons."""
    rows: list[dict[str, str | None]] = []
    bad: list[int] = []
    reasons: list[str] = []
    text = block[:-1] if block.endswith(b"\n") else block
    for i, line in enumerate(text.split(b"\n")):
        if not line.strip():
            rows.append({})  # all missing: rejected as "empty row"
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(row + i)
            reasons.append("not valid JSON")
            continue
        if not isinstance(obj, dict):
            bad.append(row + i)
            reasons.append("not a JSON object")
            continue
        rows.append({str(k): None if v is None else _as_text(v) for k, v in obj.items()})
    names = {k for r in rows for k in r}
    return (
        pa.table(
            {k: pa.array([r.get(k) for r in rows], pa.string()) for k in names}
            or {c: pa.array([None] * len(rows), pa.string()) for c in COLUMNS}
        ),
        bad,
        reasons,
    )


def _as_text(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _canonical_columns(table: pa.Table) -> pa.Table:
    """Add the canonical columns a block lacks (all missing: each row rejected)."""
    have = {ALIASES.get(n.strip().lower().replace("-", "_")) for n in table.column_names}
    for c in COLUMNS:
        if c not in have:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
    return table
