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
- ``chunks``: :class:`ChunkTask`, a chunk that loads on any thread, and the read errors;
- ``validate``: one chunk -> WGS-84 pings and rejected rows (:func:`frame_to_pings`,
  :func:`arrow_to_pings`);
- ``body``: a request body -> a raw frame, for :func:`frame_to_pings`.
"""

from heatmap.ingest.body import BODY_TYPES, body_to_frame
from heatmap.ingest.chunks import ChunkTask
from heatmap.ingest.files import ping_tasks, read_pings
from heatmap.ingest.options import (
    ALIASES,
    COLUMNS,
    CRS_NAMES,
    MAX_SAMPLES,
    ParseOptions,
    Rejects,
    resolve_columns,
)
from heatmap.ingest.validate import _seconds_if_valid as _seconds_if_valid
from heatmap.ingest.validate import arrow_to_pings, frame_to_pings

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
