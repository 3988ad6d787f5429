"""Parse and validate pings from files and request bodies; convert coordinates to WGS-84.

Every input becomes chunks of a canonical frame: ``device_id`` (text, dictionary-encoded where
it comes from a file), ``ts`` (int64 epoch s),
``lat``, ``lng`` (float64, WGS-84). Rows that cannot be used are counted by reason (and, for
request bodies, listed with their 1-based data-row number); with ``strict`` the first bad row
fails the whole input with a one-line reason. Files are read in bounded chunks.

The modules, in data-flow order:

- ``options``: the canonical columns and their aliases, :class:`ParseOptions`, :class:`Rejects`;
- ``files``: a file of any kind -> chunk tasks (:func:`ping_tasks`) or pings (:func:`read_pings`);
- ``csv``, ``ndjson``, ``parquet``: one format -> chunk tasks (blocks of whole lines, runs of
  row groups), each imported only when a file of its format comes;
- ``lines`` (text) and ``readahead`` (Parquet): a file cut into those blocks, with their lines
  counted; a Parquet file's plan of chunks, its first chunk decoded while the process still
  imports;
- ``chunks``: :class:`ChunkTask`, a chunk that loads on any thread, and the read errors;
- ``validate``: one chunk -> WGS-84 pings and rejected rows (:func:`frame_to_pings`,
  :func:`arrow_to_pings`);
- ``body``: a request body -> a raw frame, for :func:`frame_to_pings`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heatmap.ingest.options import (
    ALIASES,
    COLUMNS,
    CRS_NAMES,
    MAX_SAMPLES,
    ParseOptions,
    Rejects,
    resolve_columns,
)

if TYPE_CHECKING:
    from heatmap.ingest.body import BODY_TYPES, body_to_frame
    from heatmap.ingest.chunks import ChunkTask
    from heatmap.ingest.files import ping_tasks, read_pings
    from heatmap.ingest.validate import arrow_to_pings, frame_to_pings

# Imported on first use (PEP 562), not with the package: ``heatmap ingest`` starts reading its
# first file (``readahead``) before it imports polars and the rest.
_LAZY = {
    "BODY_TYPES": "body",
    "body_to_frame": "body",
    "ChunkTask": "chunks",
    "ping_tasks": "files",
    "read_pings": "files",
    "arrow_to_pings": "validate",
    "frame_to_pings": "validate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ALIASES",
    "BODY_TYPES",
    "COLUMNS",
    "CRS_NAMES",
    "MAX_SAMPLES",
    "ChunkTask",
    "ParseOptions",
    "Rejects",
    "arrow_to_pings",
    "body_to_frame",
    "frame_to_pings",
    "ping_tasks",
    "read_pings",
    "resolve_columns",
]
