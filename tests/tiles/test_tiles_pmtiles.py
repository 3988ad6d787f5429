"""PMTiles v3 export: a round trip through the pmtiles package's reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import Compression, TileType

from heatmap.model import Snapshot
from tiles.errors import TileError
from tiles.grid import tiles_in_bounds
from tiles.pmtiles import write_pmtiles
from tiles.raster import snapshot_to_png
from tiles.tilejson import data_bounds
from tiles.vector import snapshot_to_mvt


@pytest.mark.parametrize("fmt", ["mvt", "png"])
def test_round_trip_every_tile_equals_the_served_tile(
    tmp_path: Path, snap9: Snapshot, fmt: str
) -> None:
    bounds = data_bounds(snap9)

    def render(z: int, x: int, y: int) -> bytes:
        if fmt == "mvt":
            return snapshot_to_mvt(snap9, z, x, y)
        return snapshot_to_png(snap9, z, x, y)

    progress: list[tuple[int, int]] = []
    out = tmp_path / f"window.{fmt}.pmtiles"
    n = write_pmtiles(
        out, render, fmt=fmt, minzoom=9, maxzoom=12, bounds=bounds,
        metadata={"name": "test", "attribution": "test"},
        progress=lambda done, total: progress.append((done, total)),
    )  # fmt: skip
    wanted = {t: render(*t) for t in tiles_in_bounds(bounds, range(9, 13))}
    wanted = {t: b for t, b in wanted.items() if b}
    assert n == len(wanted) > 10
    assert progress[-1][0] == progress[-1][1] == len(list(tiles_in_bounds(bounds, range(9, 13))))
    with open(out, "rb") as f:
        get = MmapSource(f)
        reader = Reader(get)
        header = reader.header()
        assert header["tile_type"] == (TileType.MVT if fmt == "mvt" else TileType.PNG)
        assert header["tile_compression"] == (
            Compression.GZIP if fmt == "mvt" else Compression.NONE
        )
        assert header["min_zoom"] == 9 and header["max_zoom"] == 12
        meta = reader.metadata()
        assert meta["name"] == "test"
        assert ("vector_layers" in meta) == (fmt == "mvt")
        got = {}
        for (z, x, y), data in all_tiles(get):
            got[(z, x, y)] = gzip.decompress(data) if fmt == "mvt" else bytes(data)
        assert got == wanted
        z, x, y = next(iter(wanted))
        raw = reader.get(z, x, y)
        assert (gzip.decompress(raw) if fmt == "mvt" else raw) == wanted[(z, x, y)]


def test_nothing_to_export_raises_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "empty.pmtiles"
    with pytest.raises(TileError, match="no non-empty tile"):
        write_pmtiles(out, lambda z, x, y: b"", fmt="mvt", minzoom=5, maxzoom=6,
                      bounds=(121.0, 31.0, 121.5, 31.5), metadata={})  # fmt: skip
    assert list(tmp_path.iterdir()) == []
