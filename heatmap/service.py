"""The write side: one object the CLI and the HTTP layer call to ingest (never the other way).

``Heatmap`` wires the stages together: ingest -> privacy -> aggregate -> commit (store) ->
publish. Reading is :class:`heatmap.read.Reader`'s job, over the same store.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from heatmap.aggregate import (
    Candidates,
    index_candidates,
    latest_candidates,
    merge_positions,
    slots_to_windows,
    windows_of,
)
from heatmap.commit import CommitResult, Precomputed, ReleaseClock, commit_unit
from heatmap.config import Settings
from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest import ChunkTask, ParseOptions, Rejects, frame_to_pings, ping_tasks
from heatmap.ingest.options import WORKERS
from heatmap.model import epoch_to_iso
from heatmap.policy import PublishPolicy
from heatmap.privacy import DeviceHasher, load_or_create_secret
from heatmap.store import Store, open_store


@dataclass
class _Chunk:
    """What one chunk task produced (see ``Heatmap._positions``)."""

    rejects: Rejects
    last_row: int
    accepted: int = 0
    late: int = 0
    max_ts: int | None = None
    min_w: int = 0
    candidates: pl.DataFrame | None = None
    tail: _Span | None = None
    """The chunk's pings of its last ``tail_s`` seconds (see ``Heatmap._positions``)."""


@dataclass
class _Span:
    """Pings with the bounds of their ``ts`` (``lo <= ts <= hi``)."""

    rows: pl.DataFrame
    lo: int
    hi: int

    def since(self, cut: int) -> _Span | None:
        """The pings from ``cut`` on (a slice of the bounds, no filter when all or none are)."""
        if self.hi < cut:
            return None
        if self.lo >= cut:
            return self
        rows = self.rows.filter(pl.col("ts") >= cut)
        return _Span(rows, cut, self.hi) if rows.height else None


def _since(spans: list[_Span], cut: int) -> list[_Span]:
    """The pings of ``spans`` from ``cut`` on: spans wholly before it dropped, spans after it
    kept as they are, only the (usually one) straddling span filtered."""
    return [x for x in (span.since(cut) for span in spans) if x is not None]


@dataclass
class IngestReport:
    """What one ingest (one or more units) did; ``summary()`` is the CLI's last line."""

    accepted: int = 0
    late: int = 0
    windows_closed: int = 0
    rejects: Rejects = field(default_factory=Rejects)
    duplicate: bool = False
    units: int = 0
    release: int | None = None
    """The latest release tick made by these units, if any."""
    rejected_rows: list[tuple[str, int, str]] = field(default_factory=list)
    """The first rejected rows of each file: (path, row, reason)."""

    def add(self, result: CommitResult) -> None:
        """Fold one committed unit into the report."""
        self.accepted += result.accepted
        self.late += result.late
        self.windows_closed += len(result.windows_closed)
        self.duplicate = self.duplicate or result.duplicate
        self.units += 1
        if result.release is not None:
            self.release = max(result.release, self.release or result.release)

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
            "release": None if self.release is None else epoch_to_iso(self.release),
            "reasons": reasons,
        }


class Heatmap:
    """The write side of the service: ingest files and batches as atomic units."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.policy = PublishPolicy.from_settings(settings)
        self.store = store or open_store(settings)
        self.key = load_or_create_secret(settings.secret, settings.store_dir)

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    # -- ingest ----------------------------------------------------------------------------------
    def _positions(
        self,
        tasks: Iterable[ChunkTask],
        report: IngestReport,
        progress: Callable[[int], None] | None = None,
        key_s: int | None = None,
        codes: DeviceCodes | None = None,
    ) -> tuple[pl.DataFrame, int | None, Precomputed | None, pl.DataFrame | None]:
        """Reduce a unit's chunks to hashed positions (``w``, ``device``, ``ts``, ``cell``).

        ``w`` is the window number, or with ``key_s`` the number of the ``key_s``-second slot
        (a batch keeps one position per release slot, so a release stays exact whatever the
        batch spans). Per window, a file also keeps the positions per release slot of its
        last ``horizon + grace + release_s`` seconds: all that its release (the latest tick
        it passes) and the releases after it need, exactly.

        Each chunk is read, validated and reduced to position candidates on a small thread pool
        (pyarrow, numpy, polars and the compiled kernels release the GIL) while this thread
        merges the results in input order; at most ``2 * workers`` chunks are in flight.
        Windows that the input has moved past are H3-indexed on the same pool meanwhile, and
        their counts and published values computed ahead of the commit (used if nothing else
        reaches those windows). Only the distinct device ids are hashed (a file's ids arrive as
        ``codes``, see :class:`DeviceCodes`). ``report`` gets the
        accepted and late pings and the rejected rows.

        Returns the positions, the latest ping time, the values computed ahead and the tail's
        positions per release slot (None when the positions are per slot already).
        """
        s = self.settings
        key_s = key_s or s.window_s
        tail_s = None if key_s == s.release_s else s.horizon + s.release_grace_s + s.release_s
        tails: list[_Span] = []
        wm = self.store.watermark()
        cutoff = None if wm is None else wm // s.window_s * s.window_s
        cands = Candidates()
        hasher = DeviceHasher(self.key, codes)
        max_ts: int | None = None
        pending: deque[Future[_Chunk]] = deque()
        ahead: list[Future[tuple[pl.DataFrame, Precomputed]]] = []

        def work(task: ChunkTask) -> _Chunk:
            out = _Chunk(Rejects(), task.first_row + task.rows - 1)
            pings = task.load(out.rejects)
            if cutoff is not None and pings.height and pings["ts"].min() < cutoff:  # type: ignore[operator]
                n = pings.height
                pings = pings.filter(pl.col("ts") >= cutoff)
                out.late = n - pings.height
            out.accepted = pings.height
            if pings.height:
                ts = pings["ts"]
                out.max_ts = int(ts.max())  # type: ignore[arg-type]
                min_ts = int(ts.min())  # type: ignore[arg-type]
                out.min_w = min_ts // key_s
                out.candidates = latest_candidates(pings, key_s)
                if tail_s is not None:
                    # Pings near this chunk's end may be near the unit's end, which is known
                    # only at the end: keep them as they are until then (the whole chunk, no
                    # copy, when it spans less than the tail).
                    out.tail = _Span(pings, min_ts, out.max_ts).since(out.max_ts - tail_s)
            return out

        def settle(ripe: pl.DataFrame) -> tuple[pl.DataFrame, Precomputed]:
            positions = index_candidates(ripe, s.base_res)
            return hasher.replace_ids(positions), Precomputed.of(positions, self.policy)

        def keep_tail(tail: _Span, span: int) -> None:
            """Keep a chunk's last pings, dropping what the unit has moved past meanwhile."""
            nonlocal tails
            tails.append(tail)
            if max_ts is not None and sum(t.rows.height for t in tails) > 1 << 22:
                tails = _since(tails, max_ts - span)

        def tail_candidates(tails: list[_Span], since: int) -> pl.DataFrame:
            """The candidates per release slot of the unit's pings from ``since`` on."""
            tail = pl.concat([t.rows for t in _since(tails, since)])
            return latest_candidates(tail, s.release_s)

        def take(pool: ThreadPoolExecutor) -> None:
            nonlocal max_ts
            done = pending.popleft().result()
            report.accepted += done.accepted
            report.late += done.late
            report.rejects.merge(done.rejects)
            if done.max_ts is not None:
                max_ts = done.max_ts if max_ts is None else max(max_ts, done.max_ts)
            if done.tail is not None and tail_s is not None:
                keep_tail(done.tail, tail_s)
            if done.candidates is not None:
                cands.add(done.candidates)
                ripe = cands.ripe(done.min_w)
                if ripe.height:
                    ahead.append(pool.submit(settle, ripe))
            if progress:
                progress(done.last_row)

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for task in tasks:
                pending.append(pool.submit(work, task))
                while pending and (len(pending) >= 2 * WORKERS or pending[0].done()):
                    take(pool)
            while pending:
                take(pool)
            tail_job = None
            if tail_s is not None and tails and max_ts is not None:
                # On a worker, while this thread indexes the rest of the candidates.
                tail_job = pool.submit(tail_candidates, tails, max_ts - tail_s)
            last = cands.rest()
            parts = [index_candidates(last, s.base_res, pool.map)] if last.height else []
            parts = [hasher.replace_ids(p) for p in parts]
            settled = [f.result() for f in ahead]
            slots = None
            if tail_job is not None and (cands_tail := tail_job.result()).height:
                # Indexed by every worker: about one position per device and release slot.
                slots = hasher.replace_ids(index_candidates(cands_tail, s.base_res, pool.map))
        parts += [p for p, _ in settled]
        # Values computed ahead hold for windows that no other part of the unit reaches.
        seen = Counter(w for p in parts for w in windows_of(p))
        once = {w for w, n in seen.items() if n == 1}
        pre = Precomputed.combine([a for _, a in settled], once)
        return merge_positions(parts), max_ts, pre, slots

    def commit(
        self,
        positions: pl.DataFrame,
        max_ts: int | None,
        *,
        batch_id: str | None = None,
        accepted: int = 0,
        ahead: Precomputed | None = None,
        slots: pl.DataFrame | None = None,
    ) -> CommitResult:
        """Commit one unit's positions to the store under this service's policy.

        ``slots`` are the unit's positions per release slot (a batch, a file's tail); without
        them the release is made at a window boundary (see :func:`heatmap.commit.commit_unit`).
        """
        s = self.settings
        return commit_unit(
            self.store,
            positions,
            max_ts,
            self.policy,
            lateness_s=s.allowed_lateness_s,
            clock=ReleaseClock(s.release_s, s.horizon, s.release_grace_s, s.release_keep_s),
            batch_id=batch_id,
            accepted=accepted,
            ahead=ahead,
            slots=slots,
        )

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
            unit = IngestReport()
            cb = (lambda n, p=path: progress(p, n)) if progress else None
            codes = DeviceCodes()  # the file's ids as integer codes, hashed once each
            tasks = ping_tasks(path, opts, unit.rejects, codes)
            positions, max_ts, ahead, slots = self._positions(tasks, unit, cb, codes=codes)
            report.add(
                self.commit(positions, max_ts, accepted=unit.accepted, ahead=ahead, slots=slots)
            )
            report.late += unit.late
            report.rejects.merge(unit.rejects)
            report.rejected_rows += [(str(path), r, why) for r, why in sorted(unit.rejects.rows)]

    def ingest_frame(
        self, frame: pl.DataFrame, opts: ParseOptions, batch_id: str | None = None
    ) -> IngestReport:
        """Ingest one batch (a POSTed body) as a unit; durable when this returns."""
        report = IngestReport(rejects=Rejects())
        if frame.height == 0:
            raise BadInput("batch is empty")
        pings = frame_to_pings(frame, opts, report.rejects, source="batch")
        unit = IngestReport()
        task = ChunkTask(1, pings.height, lambda _: pings)
        s = self.settings
        slots, max_ts, _, _ = self._positions([task], unit, key_s=s.release_s)
        positions = slots_to_windows(slots, s.release_s, s.window_s)
        report.add(
            self.commit(positions, max_ts, batch_id=batch_id, accepted=unit.accepted, slots=slots)
        )
        if not report.duplicate:
            report.late += unit.late
        return report


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
