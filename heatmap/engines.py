"""Aggregation engines for backfills: the same kernel on local partitions or on a Dask cluster.

A backfill (``heatmap aggregate``) is one unit. Its files are cut into partitions (a CSV file, or
a run of Parquet row groups); each partition is parsed and validated like ``heatmap ingest`` does,
reduced to positions (one row per window and device: its latest ping) by the kernel of
:mod:`heatmap.aggregate`, and its device ids are replaced by their keyed hash where it was read,
so raw ids never travel. Positions are then merged exactly and committed on the client with the
same :func:`heatmap.commit.commit_unit` as every other unit.

Exactness does not depend on the partitioning: ``merge_positions`` is associative and
commutative, and ``pings_to_positions`` of a partition is the merge of its pings taken one by
one, so any tree of merges over any split of the input yields the positions of a single pass.
Before merging, each partition's positions are split into buckets by window (``w mod B``); a
(window, device) lives in exactly one bucket, so buckets merge independently (in parallel on a
cluster) and their results are disjoint: concatenating them is exact too.

The local engine runs the very same plan in-process, eagerly, with one bucket.
"""

from __future__ import annotations

import abc
import dataclasses
import glob
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from heatmap.aggregate import (
    Candidates,
    empty_positions,
    index_candidates,
    latest_candidates,
    merge_positions,
)
from heatmap.errors import BadInput, HeatmapError
from heatmap.ingest import ParseOptions, Rejects, read_pings, resolve_columns
from heatmap.ingest.validate import check_arrow_types
from heatmap.privacy import DeviceHasher

if TYPE_CHECKING:
    from heatmap.service import Heatmap, IngestReport

PARTITION_ROWS = 1 << 21  # target rows per Parquet partition: ~100 MB of pings in memory
FAN_IN = 8  # frames per merge task: few levels, small merges
SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")

# progress(stage, done, total): stage "read" counts rows, "merge" counts merged buckets.
Progress = Callable[[str, int, int | None], None]


class EngineUnavailable(HeatmapError):
    """The Dask cluster cannot be reached or started."""

    status = 503


# ---------------------------------------------------------------------------------------------
# Planning: paths -> files -> partitions


@dataclass(frozen=True)
class Partition:
    """A piece of input one task reads: a whole CSV file or a run of Parquet row groups."""

    path: str
    parquet: bool
    row_groups: tuple[int, ...] = ()
    first_row: int = 1  # 1-based data-row number of the partition's first row in its file
    rows: int | None = None  # known for Parquet (metadata), unknown for CSV


def expand_paths(paths: list[str]) -> list[Path]:
    """Return the input files named by ``paths``: files, globs, or directories (recursively).

    Directories contribute their Parquet, CSV and NDJSON files (``.parquet``, ``.pq``,
    ``.csv``, ``.ndjson``, ``.jsonl``, the text ones gzipped too; Hive-style datasets
    included). Raises ``BadInput`` for a path that matches nothing.
    """
    out: dict[Path, None] = {}  # ordered set: the same file named twice is read once
    for raw in paths:
        names = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not names:
            raise BadInput(f"{raw}: no file matches")
        for name in names:
            p = Path(name)
            if p.is_dir():
                found = sorted(
                    f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SUFFIXES)
                )
                if not found:
                    raise BadInput(f"{p}: directory holds no Parquet, CSV or NDJSON file")
                out.update(dict.fromkeys(f.resolve() for f in found))
            elif p.is_file():
                out[p.resolve()] = None
            else:
                raise BadInput(f"{p}: no such file or directory")
    return list(out)


def _is_parquet(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror or exc})") from exc


def plan_partitions(files: list[Path], partition_rows: int = PARTITION_ROWS) -> list[Partition]:
    """Cut files into partitions: consecutive Parquet row groups up to ``partition_rows`` rows.

    A text file (CSV or NDJSON, gzipped or not) cannot be split without reading it, so it is
    one partition. Missing
    columns and unreadable Parquet footers raise ``BadInput`` here, before any task runs.
    """
    parts: list[Partition] = []
    for path in files:
        if not _is_parquet(path):
            parts.append(Partition(str(path), parquet=False))
            continue
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as exc:
            raise BadInput(f"{path}: unreadable Parquet file ({exc})") from exc
        schema = meta.schema.to_arrow_schema()
        check_arrow_types(schema, resolve_columns(schema.names), str(path))
        groups: list[int] = []
        rows = 0
        first = 1
        for i in range(meta.num_row_groups):
            groups.append(i)
            rows += meta.row_group(i).num_rows
            if rows >= partition_rows or i == meta.num_row_groups - 1:
                parts.append(Partition(str(path), True, tuple(groups), first, rows))
                first += rows
                groups, rows = [], 0
    return parts


# ---------------------------------------------------------------------------------------------
# The partition task (runs on a worker)


@dataclass(frozen=True)
class KernelConfig:
    """Everything a partition task needs; shipped with each task (small)."""

    window_s: int
    base_res: int
    key: bytes  # device-id hashing key: ids are hashed where they are read
    opts: ParseOptions
    cutoff: int | None = None  # pings before this ts fall in windows already closed: late
    buckets: int = 1


@dataclass
class PartitionStats:
    """What reading one partition (or all of them, once folded) found."""

    accepted: int = 0
    late: int = 0
    max_ts: int | None = None
    rejects: Rejects = field(default_factory=Rejects)

    @property
    def rows(self) -> int:
        """Return the number of data rows read."""
        return self.accepted + self.late + self.rejects.total

    def fold(self, other: PartitionStats) -> None:
        """Add another partition's stats to these."""
        self.accepted += other.accepted
        self.late += other.late
        if other.max_ts is not None:
            self.max_ts = other.max_ts if self.max_ts is None else max(self.max_ts, other.max_ts)
        self.rejects.merge(other.rejects)


def _read_partition(
    part: Partition, opts: ParseOptions, rejects: Rejects
) -> Iterator[pl.DataFrame]:
    path = Path(part.path)
    if not part.parquet:
        yield from read_pings(path, opts, rejects)
        return
    from heatmap.ingest.parquet import _parquet_tasks

    row = part.first_row
    try:
        for task in _parquet_tasks(path, opts, part.row_groups, part.first_row):
            row = task.first_row
            yield task.load(rejects)
    except BadInput:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{path}: unreadable near row {row} ({msg})") from exc


def partition_to_positions(
    part: Partition, cfg: KernelConfig
) -> tuple[list[pl.DataFrame], PartitionStats]:
    """Read one partition and reduce it to hashed positions, split into ``cfg.buckets`` buckets.

    Returns the per-bucket position frames (``w``, ``device`` keyed hash, ``ts``, ``cell``;
    bucket ``b`` holds the windows with ``w mod buckets == b``) and the partition's stats.
    """
    stats = PartitionStats()
    cands = Candidates()
    for chunk in _read_partition(part, cfg.opts, stats.rejects):
        if cfg.cutoff is not None and chunk.height:
            n = chunk.height
            chunk = chunk.filter(pl.col("ts") >= cfg.cutoff)
            stats.late += n - chunk.height
        if not chunk.height:
            continue
        stats.accepted += chunk.height
        top = int(chunk["ts"].max())  # type: ignore[arg-type]
        stats.max_ts = top if stats.max_ts is None else max(stats.max_ts, top)
        cands.add(latest_candidates(chunk, cfg.window_s))
    last = cands.rest()
    if not last.height:
        return split_by_window(empty_positions(), cfg.buckets), stats
    positions = DeviceHasher(cfg.key).replace_ids(index_candidates(last, cfg.base_res))
    return split_by_window(positions, cfg.buckets), stats


def split_by_window(positions: pl.DataFrame, buckets: int) -> list[pl.DataFrame]:
    """Split positions into ``buckets`` frames by ``w mod buckets`` (empty frames kept)."""
    if buckets == 1:
        return [positions]
    parts = positions.with_columns(_b=pl.col("w") % buckets).partition_by("_b", as_dict=True)
    empty = positions.clear()
    return [parts[(b,)].drop("_b") if (b,) in parts else empty for b in range(buckets)]


def merge_frames(*frames: pl.DataFrame) -> pl.DataFrame:
    """Merge position frames (a merge-tree node)."""
    return merge_positions(list(frames))


def _bucket(result: tuple[list[pl.DataFrame], PartitionStats], b: int) -> pl.DataFrame:
    return result[0][b]


def _stats(result: tuple[list[pl.DataFrame], PartitionStats]) -> PartitionStats:
    return result[1]


# ---------------------------------------------------------------------------------------------
# Engines: where tasks run


class Engine(abc.ABC):
    """Runs tasks: ``submit`` returns a handle; handles may be passed as task arguments."""

    name = "engine"
    buckets = 1

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Schedule ``fn(*args)`` (handle arguments resolve to their values); return a handle."""

    @abc.abstractmethod
    def is_done(self, handle: Any) -> bool:
        """Return True when the handle's value is ready."""

    @abc.abstractmethod
    def as_completed(self, handles: list[Any]) -> Iterator[Any]:
        """Yield the values of ``handles`` as they become ready."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Ready:
    value: Any


class LocalEngine(Engine):
    """Runs every task in this process as it is submitted (no Dask)."""

    name = "local"

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Ready:
        """Run ``fn`` now."""
        return _Ready(fn(*(a.value if isinstance(a, _Ready) else a for a in args)))

    def is_done(self, handle: Any) -> bool:
        """Always True: tasks ran at submission."""
        return True

    def as_completed(self, handles: list[Any]) -> Iterator[Any]:
        """Yield the values in order."""
        for h in handles:
            yield h.value


class DaskEngine(Engine):
    """Runs tasks on a Dask cluster: a scheduler's address, or a local cluster of N processes."""

    name = "dask"

    def __init__(
        self, scheduler: str | None = None, workers: int | None = None, timeout_s: float = 20
    ) -> None:
        import dask
        from distributed import Client, LocalCluster

        self.cluster: LocalCluster | None = None
        try:
            if scheduler:
                self.client = Client(scheduler, timeout=timeout_s)
            else:
                n = workers or os.cpu_count() or 1
                # One task per worker process; polars inside it gets that process's share of the
                # cores, else N workers x all-core thread pools oversubscribe the machine.
                # (set before the worker processes spawn: polars reads it once, at import).
                threads = str(max(1, (os.cpu_count() or 1) // n))
                with dask.config.set(
                    {"distributed.nanny.pre-spawn-environ.POLARS_MAX_THREADS": threads}
                ):
                    self.cluster = LocalCluster(
                        n_workers=n,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    )
                self.client = Client(self.cluster)
        except (OSError, TimeoutError, RuntimeError) as exc:
            self.close()
            where = scheduler or "a local cluster"
            raise EngineUnavailable(f"cannot reach Dask at {where}: {exc}") from exc
        # One bucket per worker thread lets the last merge level use the whole cluster.
        self.buckets = max(1, sum(self.client.nthreads().values()))
        try:
            # Import the kernel on every worker now (not inside the first tasks' time), and
            # find out here if a worker lacks it.
            self.client.run(_warm_up)
        except ImportError as exc:
            self.close()
            raise EngineUnavailable(
                f"a Dask worker cannot import heatmap ({exc}): install the same heatmap "
                "version on every worker"
            ) from exc

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit a task (futures in ``args`` become dependencies)."""
        return self.client.submit(fn, *args, pure=False)

    def is_done(self, handle: Any) -> bool:
        """Return whether the future has finished."""
        return bool(handle.done())

    def as_completed(self, handles: list[Any]) -> Iterator[Any]:
        """Yield values in completion order (errors raise here)."""
        from distributed import as_completed

        for _fut, value in as_completed(handles, with_results=True):
            yield value

    def worker_peak_rss(self) -> dict[str, int]:
        """Return each worker process's peak resident memory in bytes (Linux ``ru_maxrss``)."""
        return self.client.run(_peak_rss)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the client and, if we started it, the local cluster."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def _warm_up() -> None:
    import heatmap.engines  # noqa: F401 - the import is the point


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def open_engine(name: str, scheduler: str | None = None, workers: int | None = None) -> Engine:
    """Return the engine called ``name`` (``local`` or ``dask``)."""
    if name == "local":
        if scheduler or workers:
            raise BadInput("--scheduler and --workers need --engine dask")
        return LocalEngine()
    if name == "dask":
        if scheduler and workers:
            raise BadInput(
                "use --scheduler (a running cluster) or --workers (a local one), not both"
            )
        return DaskEngine(scheduler, workers)
    raise BadInput(f"unknown --engine {name!r}: use local or dask")


# ---------------------------------------------------------------------------------------------
# The plan: partitions -> bucketed merge trees -> positions


class _MergeTree:
    """A streaming merge tree of fan-in ``FAN_IN`` over handles of position frames.

    Frames are merged as soon as ``FAN_IN`` of them wait at a level, so the local engine keeps
    O(FAN_IN x depth) frames in memory and a cluster starts merging while it is still reading.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.levels: list[list[Any]] = []

    def push(self, handle: Any, level: int = 0) -> None:
        if len(self.levels) <= level:
            self.levels.append([])
        self.levels[level].append(handle)
        if len(self.levels[level]) == FAN_IN:
            batch, self.levels[level] = self.levels[level], []
            self.push(self.engine.submit(merge_frames, *batch), level + 1)

    def finish(self) -> Any:
        rest = [h for level in self.levels for h in level]
        self.levels = []
        if len(rest) == 1:
            return rest[0]
        return self.engine.submit(merge_frames, *rest)


@dataclass
class Aggregated:
    """The exact positions of a whole backfill and what reading it found."""

    positions: pl.DataFrame
    stats: PartitionStats
    partitions: int
    seconds: float


def partitions_to_positions(
    parts: list[Partition],
    cfg: KernelConfig,
    engine: Engine,
    progress: Progress | None = None,
) -> Aggregated:
    """Run the kernel over every partition on ``engine`` and merge the positions exactly."""
    t0 = time.perf_counter()
    cfg = dataclasses.replace(cfg, buckets=engine.buckets)
    total = None if any(p.rows is None for p in parts) else sum(p.rows or 0 for p in parts)
    trees = [_MergeTree(engine) for _ in range(cfg.buckets)]
    stats = PartitionStats()
    waiting: list[Any] = []

    def fold(s: PartitionStats) -> None:
        stats.fold(s)
        if progress:
            progress("read", stats.rows, total)

    for part in parts:
        result = engine.submit(partition_to_positions, part, cfg)
        waiting.append(engine.submit(_stats, result))
        for b, tree in enumerate(trees):
            tree.push(engine.submit(_bucket, result, b))
        del result  # the bucket and stats tasks hold it; released once they ran
        ready = [engine.is_done(h) for h in waiting]
        if any(ready):
            for s in engine.as_completed([h for h, r in zip(waiting, ready, strict=True) if r]):
                fold(s)
            waiting = [h for h, r in zip(waiting, ready, strict=True) if not r]
    for s in engine.as_completed(waiting):
        fold(s)
    roots = [tree.finish() for tree in trees if tree.levels]
    frames: list[pl.DataFrame] = []
    for i, frame in enumerate(engine.as_completed(roots), 1):
        frames.append(frame)
        if progress:
            progress("merge", i, len(roots))
    # Buckets hold disjoint windows, so their union is a plain concatenation.
    positions = (
        pl.concat([f for f in frames if f.height])
        if any(f.height for f in frames)
        else (empty_positions())
    )
    return Aggregated(positions, stats, len(parts), time.perf_counter() - t0)


def aggregate_paths(
    hm: Heatmap,
    paths: list[str],
    opts: ParseOptions,
    engine: Engine,
    *,
    partition_rows: int = PARTITION_ROWS,
    progress: Progress | None = None,
) -> IngestReport:
    """Aggregate every file under ``paths`` as ONE unit (a backfill) and commit it to the store.

    Rows in windows the store closed before the backfill are late (reported, not merged); the
    backfill never rejects its own rows, whatever their order: the watermark moves once, after
    the commit. Returns the same report as ``heatmap ingest``.
    """
    from heatmap.service import IngestReport

    s = hm.settings
    parts = plan_partitions(expand_paths(paths), partition_rows)
    wm = hm.store.watermark()
    cfg = KernelConfig(
        window_s=s.window_s,
        base_res=s.base_res,
        key=hm.key,
        # One clock for every task: "too far in the future" must not depend on when a task ran.
        opts=dataclasses.replace(opts, now=time.time() if opts.now is None else opts.now),
        cutoff=None if wm is None else wm // s.window_s * s.window_s,
    )
    agg = partitions_to_positions(parts, cfg, engine, progress)
    result = hm.commit(agg.positions, agg.stats.max_ts, accepted=agg.stats.accepted)
    report = IngestReport(rejects=agg.stats.rejects)
    report.add(result)
    report.late += agg.stats.late
    return report
