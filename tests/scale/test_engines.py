"""The Dask engine equals the local engine exactly, whatever the partitioning.

Inputs are cut so that device-windows are split across partitions (rows shuffled between files,
row groups smaller than a window's pings), which only the exact merge of positions gets right.
Positions are compared (a stronger check than counts: counts are a function of positions), and
so are the published values computed from them, on the real GeoLife file and a simulated city.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from heatmap.aggregate import cells_to_counts, rollup
from heatmap.config import Settings
from heatmap.engines import (
    DaskEngine,
    Engine,
    KernelConfig,
    LocalEngine,
    aggregate_paths,
    expand_paths,
    partitions_to_positions,
    plan_partitions,
)
from heatmap.errors import BadInput
from heatmap.ingest import ParseOptions
from heatmap.policy import PublishPolicy
from heatmap.publish import counts_to_published
from heatmap.service import Heatmap
from heatmap.simulate import simulate_pings
from tests.conftest import reference_counts

KEY = b"scale-test-key-0123456789abcdef!"
START = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
OPTS = ParseOptions(now=START.timestamp() + 86_400 * 3)
GEO_OPTS = ParseOptions(now=1.4e9)  # GeoLife ends in 2012


def _cfg(settings: Settings | None = None, opts: ParseOptions = OPTS) -> KernelConfig:
    s = settings or Settings(secret="x", basemap_url="")
    return KernelConfig(window_s=s.window_s, base_res=s.base_res, key=KEY, opts=opts)


def _positions(
    paths: list[Path], engine: Engine, partition_rows: int, opts: ParseOptions = OPTS
) -> pl.DataFrame:
    parts = plan_partitions(expand_paths([str(p) for p in paths]), partition_rows)
    agg = partitions_to_positions(parts, _cfg(opts=opts), engine)
    return agg.positions.sort("w", "device")


def _published(positions: pl.DataFrame) -> pl.DataFrame:
    s = Settings(secret="x", basemap_url="", k_min=2)
    policy = PublishPolicy.from_settings(s)
    return counts_to_published(cells_to_counts(positions), policy).sort("w", "res", "cell")


def _write_parquet(frame: pl.DataFrame, path: Path, row_group: int) -> Path:
    # Uncompressed, no dictionary: the fastest to write, and the tests are about row groups.
    pq.write_table(
        frame.to_arrow(), path, row_group_size=row_group, compression="none", use_dictionary=False
    )
    return path


def _split(frame: pl.DataFrame, n: int, seed: int) -> list[pl.DataFrame]:
    """Deal rows at random into ``n`` pieces (device-windows end up in several pieces)."""
    piece = np.random.default_rng(seed).integers(0, n, frame.height)
    tagged = frame.with_columns(_p=pl.Series(piece))
    return [tagged.filter(pl.col("_p") == i).drop("_p") for i in range(n)]


# ---------------------------------------------------------------------------------------------
# A simulated city


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    """2 h of 3,000 simulated Shanghai devices (~360 k pings) and one Parquet file of them."""
    tables = list(simulate_pings(devices=3000, start=START, hours=2, interval_s=60, seed=3))
    frame = pl.from_arrow(pa.concat_tables(tables))
    assert isinstance(frame, pl.DataFrame)
    root = tmp_path_factory.mktemp("city")
    return frame, _write_parquet(frame, root / "all.parquet", 1 << 20)


@pytest.fixture(scope="module")
def city_reference(city: tuple[pl.DataFrame, Path]) -> pl.DataFrame:
    """Local engine, one partition: the plain single-pass answer."""
    return _positions([city[1]], LocalEngine(), 1 << 30)


def _layout_row_groups(frame: pl.DataFrame, root: Path) -> tuple[list[Path], int]:
    # One file in time order, row groups of 40k rows, one row group per partition.
    return [_write_parquet(frame, root / "rg.parquet", 40_000)], 1


def _layout_shuffled_files(frame: pl.DataFrame, root: Path) -> tuple[list[Path], int]:
    # Rows dealt at random into 4 files, row groups of 25k, partitions of ~2 row groups.
    d = root / "dataset"
    d.mkdir()
    for i, part in enumerate(_split(frame, 4, seed=1)):
        _write_parquet(part, d / f"part-{i}.parquet", 25_000)
    return [d], 50_000


def _layout_mixed_formats(frame: pl.DataFrame, root: Path) -> tuple[list[Path], int]:
    # Sorted by device (like real exports): CSV, gzip CSV and Parquet pieces.
    pieces = _split(frame.sort("device_id", "ts"), 4, seed=2)
    out = [root / "a.csv", root / "b.csv.gz", root / "c.parquet", root / "d.parquet"]
    pieces[0].write_csv(out[0])
    import gzip

    with gzip.open(out[1], "wb", compresslevel=1) as fh:
        pieces[1].write_csv(fh)
    _write_parquet(pieces[2], out[2], 9_999)
    _write_parquet(pieces[3], out[3], 70_000)
    return out, 30_000


LAYOUTS: dict[str, Callable[[pl.DataFrame, Path], tuple[list[Path], int]]] = {
    "row-groups": _layout_row_groups,
    "shuffled-files": _layout_shuffled_files,
    "mixed-formats": _layout_mixed_formats,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dask_positions_equal_local_on_a_city(
    layout: str, city, city_reference, dask_engine: DaskEngine, tmp_path: Path
) -> None:
    paths, rows = LAYOUTS[layout](city[0], tmp_path)
    got = _positions(paths, dask_engine, rows)
    assert_frame_equal(got, city_reference)
    assert_frame_equal(_published(got), _published(city_reference))


def test_local_engine_on_many_partitions_equals_one_pass(city, city_reference, tmp_path) -> None:
    paths, rows = _layout_shuffled_files(city[0], tmp_path)
    assert_frame_equal(_positions(paths, LocalEngine(), rows), city_reference)


def test_city_counts_equal_the_plain_h3_reference(city, city_reference) -> None:
    frame = city[0]
    rows = list(zip(*(frame[c].to_list() for c in ("device_id", "ts", "lat", "lng")), strict=True))
    ref = reference_counts(rows, 300, 10, 8)
    rolled = rollup(cells_to_counts(city_reference), 10, 8)
    got = {(w, r, h3.int_to_str(c)): d for w, r, c, d in rolled.iter_rows()}
    assert got == ref


def test_aggregate_into_stores_publishes_the_same(
    city, dask_engine: DaskEngine, make_settings, tmp_path: Path
) -> None:
    paths, rows = _layout_shuffled_files(city[0], tmp_path)
    answers = []
    for name, engine in (("local", LocalEngine()), ("dask", dask_engine)):
        s = make_settings(db=str(tmp_path / name / "h.db"), k_min=3)
        hm = Heatmap(s)
        report = aggregate_paths(hm, [str(p) for p in paths], OPTS, engine, partition_rows=rows)
        assert report.summary()["accepted"] == city[0].height
        assert report.late == 0  # one unit: its own rows are never late
        published = {}
        for info in hm.store.windows():
            pub = hm.store.read_published(info.w) if info.closed else None
            published[info.w] = (info.closed, None if pub is None else pub.frame.to_dicts())
        answers.append((report.summary(), published))
        hm.close()
    assert answers[0] == answers[1]
    assert sum(closed for closed, _ in answers[0][1].values()) >= 20


def test_rows_of_windows_the_store_closed_are_late(city, make_settings, tmp_path) -> None:
    frame = city[0]
    cut = int(frame["ts"].min()) + 3600
    first, second = frame.filter(pl.col("ts") < cut), frame.filter(pl.col("ts") >= cut - 1800)
    p1 = _write_parquet(first, tmp_path / "first.parquet", 50_000)
    p2 = _write_parquet(second.sort("device_id"), tmp_path / "second.parquet", 50_000)
    hm = Heatmap(make_settings(k_min=3, allowed_lateness_s=0))
    aggregate_paths(hm, [str(p1)], OPTS, LocalEngine())
    wm = hm.store.watermark()
    assert wm is not None
    report = aggregate_paths(hm, [str(p2)], OPTS, LocalEngine(), partition_rows=20_000)
    expected_late = second.filter(pl.col("ts") < wm // 300 * 300).height
    assert expected_late > 0
    assert report.late == expected_late
    assert report.accepted == second.height - expected_late
    hm.close()


def test_bad_rows_are_counted_alike_by_both_engines(dask_engine, tmp_path: Path) -> None:
    good = pl.DataFrame(
        {"device_id": ["a", "b", "c"], "ts": [START.timestamp()] * 3, "lat": [31.2] * 3,
         "lng": [121.4] * 3}
    ).with_columns(pl.col("ts").cast(pl.Int64))  # fmt: skip
    text = good.write_csv() + "d,notatime,31.2,121.4\n,1772434800,31.2,121.4\ne,1772434800,95,121\n"
    (tmp_path / "x.csv").write_text(text)
    parts = plan_partitions(expand_paths([str(tmp_path / "x.csv")]))
    a = partitions_to_positions(parts, _cfg(), LocalEngine())
    b = partitions_to_positions(parts, _cfg(), dask_engine)
    assert a.stats.rejects.counts == b.stats.rejects.counts
    assert a.stats.rejects.total == 3 and a.stats.accepted == 3
    assert_frame_equal(a.positions.sort("device"), b.positions.sort("device"))


def test_strict_bad_row_on_a_worker_fails_the_whole_backfill(
    dask_engine, make_settings, tmp_path: Path
) -> None:
    (tmp_path / "ok.csv").write_text("device_id,ts,lat,lng\na,1772434800,31.2,121.4\n")
    (tmp_path / "bad.csv").write_text("device_id,ts,lat,lng\nb,1772434800,95,121.4\n")
    hm = Heatmap(make_settings())
    strict = ParseOptions(now=OPTS.now, strict=True)
    with pytest.raises(BadInput, match="row 1: lat out of range"):
        aggregate_paths(hm, [str(tmp_path / "*.csv")], strict, dask_engine)
    assert hm.store.windows() == []  # nothing written
    hm.close()


def test_paths_expand_globs_and_directories(tmp_path: Path) -> None:
    (tmp_path / "d" / "x=1").mkdir(parents=True)
    for name in ("d/x=1/a.parquet", "d/b.csv", "d/notes.txt", "c.csv.gz"):
        (tmp_path / name).write_bytes(b"")
    got = expand_paths([str(tmp_path / "d"), str(tmp_path / "*.csv.gz"), str(tmp_path / "d/b.csv")])
    names = sorted(p.relative_to(tmp_path).as_posix() for p in got)
    assert names == ["c.csv.gz", "d/b.csv", "d/x=1/a.parquet"]
    with pytest.raises(BadInput, match="no file matches"):
        expand_paths([str(tmp_path / "nothing-*.parquet")])
    with pytest.raises(BadInput, match="no such file"):
        expand_paths([str(tmp_path / "missing.csv")])


def test_cli_aggregate_prints_the_ingest_summary(city, tmp_path: Path, monkeypatch) -> None:
    from heatmap.cli import app

    paths, _ = _layout_shuffled_files(city[0], tmp_path)
    monkeypatch.setenv("HEATMAP_DB", str(tmp_path / "store" / "h.db"))
    monkeypatch.setenv("HEATMAP_SECRET", "cli")
    result = CliRunner().invoke(app, ["aggregate", f"{paths[0]}/*.parquet", "--engine", "local"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["accepted"] == city[0].height and summary["late"] == 0
    assert set(summary) >= {"accepted", "rejected", "late", "windows_closed", "reasons"}
    bad = CliRunner().invoke(app, ["aggregate", str(tmp_path / "nope.parquet")])
    assert bad.exit_code == 2
    both = CliRunner().invoke(app, ["aggregate", str(paths[0]), "--workers", "2"])
    assert both.exit_code == 2 and "--engine dask" in both.output


# ---------------------------------------------------------------------------------------------
# The real GeoLife file (3.8 M pings, 179 people, 2007-2012)


@pytest.fixture(scope="module")
def geo(geolife: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Path]:
    """The GeoLife rows as a frame, and a temp dir for its layouts."""
    frame = pl.read_csv(geolife, schema_overrides={"device_id": pl.String})
    return frame, tmp_path_factory.mktemp("geo")


@pytest.fixture(scope="module")
def geo_reference(geolife: Path) -> pl.DataFrame:
    """The local engine's single-pass positions of the file."""
    return _positions([geolife], LocalEngine(), 1 << 30, GEO_OPTS)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["source-order", "shuffled-files"])
def test_dask_positions_equal_local_on_geolife(
    layout: str, geo, geo_reference, dask_engine: DaskEngine
) -> None:
    frame, root = geo
    d = root / layout
    d.mkdir()
    if layout == "source-order":  # sorted by (device, ts): a device's day spans row groups
        paths = [_write_parquet(frame, d / "all.parquet", 300_000)]
        rows = 1
    else:
        for i, part in enumerate(_split(frame, 3, seed=7)):
            _write_parquet(part, d / f"p{i}.parquet", 350_000)
        paths, rows = [d], 700_000
    got = _positions(paths, dask_engine, rows, GEO_OPTS)
    # Equal positions mean equal published values (a pure function of them; see the city test).
    assert got.height == geo_reference.height > 200_000
    assert_frame_equal(got, geo_reference)
