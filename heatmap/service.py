"""The core facade: one object the CLI and the HTTP layer call (never the other way round).

``Heatmap`` wires the stages together: ingest -> privacy -> aggregate -> store -> publish, and
caches the published snapshots per window version.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from heatmap.aggregate import merge_positions, pings_to_positions
from heatmap.config import Settings
from heatmap.errors import BadInput, NotFound
from heatmap.ingest import ParseOptions, Rejects, frame_to_pings, read_pings
from heatmap.model import Snapshot
from heatmap.privacy import DeviceHasher, load_or_create_secret
from heatmap.publish import Published, counts_to_published, published_to_snapshots, version_of
from heatmap.store import CommitResult, Store, WindowInfo, open_store

MERGE_EVERY = 16  # chunks: merge partial positions this often to bound memory
WORKERS = min(4, os.cpu_count() or 1)


@dataclass
class IngestReport:
    """What one ingest (one or more units) did; ``summary()`` is the CLI's last line."""

    accepted: int = 0
    late: int = 0
    windows_closed: int = 0
    rejects: Rejects = field(default_factory=Rejects)
    duplicate: bool = False
    units: int = 0

    def add(self, result: CommitResult) -> None:
        """Fold one committed unit into the report."""
        self.accepted += result.accepted
        self.late += result.late
        self.windows_closed += len(result.windows_closed)
        self.duplicate = self.duplicate or result.duplicate
        self.units += 1

    def summary(self) -> dict[str, object]:
        """Return the JSON summary (``accepted``, ``rejected``, ``late``, ...)."""
        reasons = dict(self.rejects.counts)
        if self.late:
            reasons["late (window already closed)"] = self.late
        return {
            "accepted": self.accepted,
            "rejected": self.rejects.total,
            "late": self.late,
            "windows_closed": self.windows_closed,
            "reasons": reasons,
        }


class Heatmap:
    """The service core: ingest units, publish snapshots, answer queries."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.key = load_or_create_secret(settings.secret, settings.store_dir)
        self._snaps: OrderedDict[tuple[int, str], dict[int, Snapshot]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    # -- ingest ----------------------------------------------------------------------------------
    def _positions(
        self, chunks: Iterable[pl.DataFrame], counts: list[int]
    ) -> tuple[pl.DataFrame, int | None]:
        """Reduce a unit's chunks to positions; ``counts`` gets [accepted, late] pings.

        Chunks are reduced on a small thread pool (numpy, polars and h3ronpy release the GIL)
        while the next chunk is read; at most ``2 * workers`` chunks are in flight.
        """
        s = self.settings
        hasher = DeviceHasher(self.key)
        wm = self.store.watermark()
        cutoff = None if wm is None else wm // s.window_s * s.window_s
        parts: list[pl.DataFrame] = []
        max_ts: int | None = None
        pending: deque[Future[pl.DataFrame]] = deque()

        def reduce(chunk: pl.DataFrame) -> pl.DataFrame:
            return pings_to_positions(chunk, s.window_s, s.base_res)

        def collect(block: bool) -> None:
            while pending and (block or pending[0].done()):
                parts.append(hasher.replace_ids(pending.popleft().result()))

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for chunk in chunks:
                if cutoff is not None and chunk.height:
                    n = chunk.height
                    chunk = chunk.filter(pl.col("ts") >= cutoff)
                    counts[1] += n - chunk.height
                counts[0] += chunk.height
                if not chunk.height:
                    continue
                top = int(chunk["ts"].max())  # type: ignore[arg-type]
                max_ts = top if max_ts is None else max(max_ts, top)
                pending.append(pool.submit(reduce, chunk))
                while len(pending) >= 2 * WORKERS:
                    parts.append(hasher.replace_ids(pending.popleft().result()))
                collect(block=False)
                if len(parts) >= MERGE_EVERY:
                    parts = [merge_positions(parts)]
            collect(block=True)
        return merge_positions(parts), max_ts

    def ingest_paths(
        self,
        paths: list[Path],
        opts: ParseOptions,
        progress: Callable[[Path, int], None] | None = None,
    ) -> IngestReport:
        """Ingest files, each one unit committed atomically after it has been read whole."""
        report = IngestReport()
        # The pipeline makes few long-lived Python objects; cyclic GC passes over the big
        # frames' wrappers only cost time (about 5% of an ingest), so pause it meanwhile.
        with _gc_paused():
            self._ingest_each(paths, opts, progress, report)
        return report

    def _ingest_each(
        self,
        paths: list[Path],
        opts: ParseOptions,
        progress: Callable[[Path, int], None] | None,
        report: IngestReport,
    ) -> None:
        for path in paths:
            rejects = Rejects()
            cb = (lambda n, p=path: progress(p, n)) if progress else None
            counts = [0, 0]
            positions, max_ts = self._positions(read_pings(path, opts, rejects, cb), counts)
            report.add(self.store.commit_unit(positions, max_ts, accepted=counts[0]))
            report.late += counts[1]
            report.rejects.counts.update(rejects.counts)
            report.rejects.rows.extend(rejects.rows[: 1000 - len(report.rejects.rows)])

    def ingest_frame(
        self, frame: pl.DataFrame, opts: ParseOptions, batch_id: str | None = None
    ) -> IngestReport:
        """Ingest one batch (a POSTed body) as a unit; durable when this returns."""
        report = IngestReport(rejects=Rejects())
        if frame.height == 0:
            raise BadInput("batch is empty")
        pings = frame_to_pings(frame, opts, report.rejects, source="batch")
        counts = [0, 0]
        positions, max_ts = self._positions([pings], counts)
        report.add(self.store.commit_unit(positions, max_ts, batch_id, accepted=counts[0]))
        if not report.duplicate:
            report.late += counts[1]
        return report

    # -- windows and snapshots -------------------------------------------------------------------
    def windows(self) -> list[WindowInfo]:
        """Return every window, oldest first."""
        return self.store.windows()

    def window(self, when: str | None = None) -> WindowInfo:
        """Return the window containing ``when`` (ISO-8601 or epoch s), or the latest one."""
        wins = self.windows()
        if not wins:
            raise NotFound("no data yet: ingest pings first")
        if when is None or when == "latest":
            return wins[-1]
        ts = parse_when(when)
        w = ts // self.settings.window_s
        for info in wins:
            if info.w == w:
                return info
        raise NotFound(f"no window at {when} (have {len(wins)} windows)")

    def snapshots(self, info: WindowInfo) -> dict[int, Snapshot]:
        """Return the window's published snapshots per resolution (cached per version)."""
        s = self.settings
        version = version_of(info.window, info.version, s)
        key = (info.w, version)
        with self._lock:
            hit = self._snaps.get(key)
            if hit is not None:
                self._snaps.move_to_end(key)
                return hit
        t0 = time.perf_counter()
        if info.closed:
            pub = self.store.read_published(info.w) or Published(info.window, _EMPTY)
        else:
            cells, dev = self.store.read_open_counts(info.w)
            counts = pl.DataFrame({"w": np.full(len(cells), info.w), "cell": cells, "devices": dev})
            seed = self.key + info.w.to_bytes(8, "little", signed=True) + version.encode()
            pub = Published(info.window, counts_to_published(counts, s, noise_seed=seed))
        snaps = published_to_snapshots(pub, s, version, complete=info.closed)
        self.last_build_s = time.perf_counter() - t0
        with self._lock:
            self._snaps[key] = snaps
            while len(self._snaps) > 48:
                self._snaps.popitem(last=False)
        return snaps

    def snapshot(self, when: str | None, res: int) -> Snapshot:
        """Return one resolution's snapshot of a window (default latest)."""
        s = self.settings
        if not s.min_res <= res <= s.base_res:
            raise BadInput(f"res {res} out of range [{s.min_res}, {s.base_res}]")
        snaps = self.snapshots(self.window(when))
        return snaps[res]


_EMPTY = pl.DataFrame(schema={"res": pl.Int8, "cell": pl.UInt64, "people": pl.Float64})


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_when(when: str) -> int:
    """Return epoch seconds from ISO-8601 (``Z`` or offset; naive = UTC) or an epoch number."""
    text = when.strip()
    try:
        return int(float(text))
    except (ValueError, OverflowError):  # not a number, or inf / nan: try ISO-8601
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise BadInput(f"window {when!r} is not ISO-8601 (e.g. 2026-11-28T09:00:00Z)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())
