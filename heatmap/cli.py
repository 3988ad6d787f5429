"""The ``heatmap`` command line (typer). Exit codes: 0 ok, 2 bad input, 1 internal error."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from heatmap.errors import BadInput, HeatmapError
from heatmap.ops_cli import register as register_ops

if TYPE_CHECKING:  # imported where used: ``heatmap --help`` needs neither, an ingest not rich
    from rich.console import Console
    from rich.progress import Progress

    from heatmap.config import Settings

app = typer.Typer(
    help="Crowd-density heatmap: pings -> private people counts per H3 cell -> tiles and JSON.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(help="Export published data (cells, PMTiles).", no_args_is_help=True)
app.add_typer(export_app, name="export")
F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _err() -> Console:
    """The console of stderr (rich costs ~20 ms to import: only an error or a terminal's
    progress bar needs it)."""
    from rich.console import Console

    return Console(stderr=True)


def _fail(code: int, message: str) -> None:
    _err().print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def reports_errors(fn: F) -> F:
    """Turn domain errors into a one-line message and exit code 2 (1 for the store/internal)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except HeatmapError as exc:
            _fail(1 if exc.status >= 500 else 2, str(exc))
        except ValueError as exc:  # settings validation and friends
            _fail(2, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except KeyboardInterrupt:
            _fail(1, "interrupted")
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
            _fail(1, f"internal error: {type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    from heatmap.config import Settings

    try:
        return Settings()
    except ValueError as exc:
        first = str(exc).splitlines()
        raise BadInput("settings: " + " ".join(first[:3])) from exc


class _Quiet:
    """Stands in for a progress bar where stderr is no terminal (a bar would not be drawn)."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> Any:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress() -> Progress | _Quiet:
    if not sys.stderr.isatty():
        return _Quiet()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}"),
        TimeElapsedColumn(),
        console=_err(),
        transient=True,
    )


@app.command()
@reports_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="CSV, CSV.gz or Parquet files")],
    crs: Annotated[str, typer.Option(help="wgs84 | gcj02 | bd09")] = "wgs84",
    strict: Annotated[bool, typer.Option(help="any bad row fails the whole file")] = False,
) -> None:
    """Ingest ping files; each file is one unit. Last line: a JSON summary."""
    _reuse_freed_memory()
    from heatmap.ingest import ParseOptions, readahead

    if paths:  # its first chunk is decoded while polars and the service are imported
        readahead.start(paths[0], ParseOptions().chunk_rows)
    from heatmap.service import Heatmap

    s = _settings()
    opts = ParseOptions(crs=crs, strict=strict, max_future_s=s.max_future_s)
    for p in paths:
        if not p.is_file():
            raise BadInput(f"{p}: no such file")
    hm = Heatmap(s)
    try:
        with _progress() as bar:
            tasks: dict[Path, Any] = {}

            def tick(path: Path, rows: int) -> None:
                if path not in tasks:
                    tasks[path] = bar.add_task(path.name, total=None)
                bar.update(tasks[path], completed=rows)

            report = hm.ingest_paths(paths, opts, progress=tick)
    finally:
        hm.close()
    _list_rejected(report.rejected_rows, report.rejects.total)
    print(json.dumps(report.summary(), ensure_ascii=False))


def _reuse_freed_memory() -> None:
    """Let a one-shot ingest reuse the memory it frees rather than hand it back to the OS.

    Each chunk allocates arrays of a few MB and frees them; returned to the OS, every new one
    is faulted in and zeroed again by the kernel, which took ~15% of an ingest's CPU time.
    glibc is told to serve blocks up to its limit (32 MiB) from its heap and not to trim it,
    and Arrow to allocate through glibc (its mimalloc pool hands pages back on its own).
    One heap (arena) for every thread: a chunk's buffers are allocated on one worker and
    freed on another, and with a heap per thread they could only be reused by the thread
    that made them (on the independent plain-id Parquet file: 150-160 k page faults instead
    of 210-225 k, peak RSS 650-700 MB instead of 890-980 MB). Only this command does it: it
    exits when done (the service trims its heap instead).
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # before pyarrow's first use
    if sys.platform != "linux":
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_arena_max = -1, -2, -3, -8
    mallopt(m_arena_max, 1)  # before the first threads: they would each make their own
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)


_LISTED_REJECTS = 20


def _list_rejected(rows: list[tuple[str, int, str]], total: int) -> None:
    """Name the first rejected rows on stderr, one line each: ``path: row N: reason``."""
    for path, row, why in rows[:_LISTED_REJECTS]:
        print(f"{path}: row {row}: {why}", file=sys.stderr)
    if total > _LISTED_REJECTS:
        print(
            f"... {total - _LISTED_REJECTS:,} more rejected rows (counts by reason below)",
            file=sys.stderr,
        )


@app.command()
@reports_errors
def aggregate(
    paths: Annotated[
        list[str], typer.Argument(help="Parquet/CSV files, directories of them, or globs")
    ],
    engine: Annotated[str, typer.Option(help="local | dask")] = "local",
    scheduler: Annotated[
        str | None, typer.Option(help="address of a running Dask scheduler, tcp://host:8786")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="start a local Dask cluster of N worker processes")
    ] = None,
    crs: Annotated[str, typer.Option(help="wgs84 | gcj02 | bd09")] = "wgs84",
    strict: Annotated[bool, typer.Option(help="any bad row fails the whole backfill")] = False,
    partition_rows: Annotated[
        int, typer.Option(min=1, help="target rows per Parquet partition (whole row groups)")
    ] = 1 << 21,
) -> None:
    """Backfill: aggregate all PATHS as ONE unit, locally or on Dask. Last line: a JSON summary."""
    from heatmap.engines import aggregate_paths, open_engine
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap

    s = _settings()
    opts = ParseOptions(crs=crs, strict=strict, max_future_s=s.max_future_s)
    hm = Heatmap(s)
    try:
        with open_engine(engine, scheduler, workers) as runner, _progress() as bar:
            tasks: dict[str, Any] = {}

            def tick(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    label = "reading" if stage == "read" else "merging"
                    tasks[stage] = bar.add_task(f"{label} ({runner.name})", total=total)
                bar.update(tasks[stage], completed=done, total=total)

            report = aggregate_paths(
                hm, paths, opts, runner, partition_rows=partition_rows, progress=tick
            )
    finally:
        hm.close()
    print(json.dumps(report.summary(), ensure_ascii=False))


@app.command()
@reports_errors
def simulate(
    out: Annotated[Path, typer.Option(help="output .csv, .csv.gz or .parquet")],
    city: Annotated[str, typer.Option(help="city model")] = "shanghai",
    devices: Annotated[int, typer.Option(min=1, help="number of devices")] = 20_000,
    start: Annotated[
        str | None, typer.Option(help="ISO start (UTC); default today 00:00 Shanghai")
    ] = None,
    hours: Annotated[float, typer.Option(min=0.01, help="duration in hours")] = 24.0,
    interval_s: Annotated[int, typer.Option(min=1, help="mean seconds between pings")] = 60,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Simulate a plausible day of pings in a city and write them to a file."""
    from heatmap.read.ref import parse_when
    from heatmap.simulate import simulate_pings, write_pings

    if not out.name.endswith((".csv", ".csv.gz", ".parquet")):
        raise BadInput(f"--out {out.name}: use .csv, .csv.gz or .parquet")
    if start is None:
        now = datetime.now(UTC)
        t0 = int(now.timestamp()) // 86400 * 86400 - 8 * 3600  # local midnight, UTC+8
        if t0 + 86400 <= now.timestamp():
            t0 += 86400
    else:
        t0 = parse_when(start)
    begin = datetime.fromtimestamp(t0, UTC)
    chunks = simulate_pings(
        city=city, devices=devices, start=begin, hours=hours, interval_s=interval_s, seed=seed
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with _progress() as bar:
        task = bar.add_task("simulating", total=None)

        def counted():  # type: ignore[no-untyped-def]
            for c in chunks:
                bar.advance(task, c.num_rows)
                yield c

        rows = write_pings(out, counted())
    print(json.dumps({"rows": rows, "out": str(out), "start": begin.isoformat()}))


@export_app.command("cells")
@reports_errors
def export_cells(
    out: Annotated[Path, typer.Option(help="output .csv, .parquet, .geojson or .gpkg")],
    res: Annotated[int | None, typer.Option(help="H3 resolution (default: base)")] = None,
    window: Annotated[
        str, typer.Option(help="ISO time of the window, 'latest' or 'all'")
    ] = "latest",
) -> None:
    """Export published (privacy-applied) cells of one or all windows."""
    from heatmap.export import check_format, snapshots_to_frame, write_cells
    from heatmap.read import Reader, Ref
    from heatmap.service import Heatmap

    check_format(out)
    ref = None if window == "all" else Ref.parse(window)
    s = _settings()
    r = s.base_res if res is None else res
    hm = Heatmap(s)
    reader = Reader.of(hm)
    try:
        reader.check_res(r)
        wins = reader.windows().infos() if ref is None else [reader.window(ref)]
        snaps = [reader.snapshots(w)[r] for w in wins]
        n = write_cells(snapshots_to_frame(snaps), out)
    finally:
        reader.close()
        hm.close()
    print(json.dumps({"rows": n, "windows": len(wins), "out": str(out)}))


@export_app.command("pmtiles")
@reports_errors
def export_pmtiles(
    out: Annotated[Path, typer.Option(help="output .pmtiles")],
    window: Annotated[
        str, typer.Option(help="ISO time of a closed window (default latest closed)")
    ] = "closed",
    format: Annotated[str, typer.Option("--format", help="mvt | png")] = "mvt",
    min_zoom: Annotated[int, typer.Option(help="lowest zoom")] = 8,
    max_zoom: Annotated[int, typer.Option(help="highest zoom")] = 13,
) -> None:
    """Export one closed window as a PMTiles v3 archive."""
    from heatmap.read import Ref
    from heatmap.tiling import export_pmtiles as run

    ref = None if window == "closed" else Ref.parse(window)
    if format not in ("mvt", "png"):
        raise BadInput(f"--format {format!r}: use mvt or png")
    if not 0 <= min_zoom <= max_zoom <= 18:
        raise BadInput("zoom range must satisfy 0 <= --min-zoom <= --max-zoom <= 18")
    with _progress() as bar:
        task = bar.add_task("tiles", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        info = run(_settings(), out, ref, format, min_zoom, max_zoom, tick)
    print(json.dumps(info))


@app.command()
@reports_errors
def serve(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    server: Annotated[str, typer.Option(help="uvicorn | granian (faster, see BENCHMARKS.md)")] = (
        "uvicorn"
    ),
) -> None:
    """Serve tiles, JSON and pages over HTTP.

    No access log: request lines of ``/api/v1/density?lat=&lng=`` are citizens' locations.
    """
    s = _settings()
    if server == "granian":
        from granian import Granian  # type: ignore[attr-defined]

        Granian(
            "heatmap.api.app:app_from_env",
            address=host,
            port=port,
            interface="asgi",  # type: ignore[arg-type]
            factory=True,
            log_access=False,
        ).serve()
        return
    if server != "uvicorn":
        raise BadInput(f"--server {server!r}: use uvicorn or granian")
    import uvicorn

    from heatmap.api import create_app
    from heatmap.api.shedding import uvicorn_http_protocol

    uvicorn.run(
        create_app(s),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        http=uvicorn_http_protocol(s),  # bounded request heads (slow or huge headers)
    )


register_ops(app, reports_errors, _settings)  # compact, backup, restore (heatmap.ops_cli)


def main() -> None:
    """Entry point of the ``heatmap`` command and ``python -m heatmap``.

    Once a command has returned, everything it wrote is committed and its store closed, so
    the process leaves at once (``os._exit``) rather than tearing the interpreter down: after
    a large ingest, freeing its memory object by object and joining idle threads took 0.3 s.
    """
    # numpy's OpenBLAS starts a thread per core that spins ~0.1 s before it sleeps, on the
    # cores the ingest needs; nothing here multiplies matrices.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # pydantic looks for plugins in every installed package's entry points on first use
    # (~10 ms); a user of one can still set the variable to something else.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
