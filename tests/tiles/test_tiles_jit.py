"""The compiled kernels: warm-up, and one machine-code version per kernel (no request compiles)."""

from __future__ import annotations

import subprocess
import sys

from tiles_testdata import make_snapshot

import tiles
from heatmap.model import Snapshot
from tiles import index, raster, vector
from tiles.index import INDEX_CACHE, IndexCache


def test_warmup_runs_once_and_leaves_no_index_behind() -> None:
    before = len(INDEX_CACHE)
    assert tiles.warmup() >= 0.0
    assert tiles.warmup() == 0.0
    assert len(INDEX_CACHE) <= before


def test_index_cache_discard() -> None:
    cache = IndexCache()
    snap = make_snapshot(8, 3, version="discard-me")
    cache.get(snap)
    assert len(cache) == 1
    cache.discard(snap)
    cache.discard(snap)  # absent: no error
    assert len(cache) == 0


def test_each_kernel_is_compiled_for_one_set_of_argument_types(
    snap9: Snapshot, snap10: Snapshot
) -> None:
    # Any other dtype or memory layout reaching a kernel would compile it again, on a request.
    tiles.warmup()
    noisy = make_snapshot(9, 8, integral=False)
    for snap, z, x, y in [
        (snap9, 12, 3430, 1673),
        (snap10, 16, 54882, 26771),
        (noisy, 13, 6860, 3346),
    ]:
        vector.snapshot_to_mvt(snap, z, x, y)
        vector.snapshot_to_mvt(snap, z, x, y, extent=512, buffer=0, layer_name="x")
        for scale in (1, 2):
            for outline in (False, True):
                raster.snapshot_to_png(snap, z, x, y, scale=scale, outline=outline)
    expected = {
        index._query: 1,
        vector._encode_layer: 1,
        raster._fill: 2,  # uint8 palette indexes, int32 labels
        raster._outline_kernel: 1,
        raster._scanlines: 1,
    }
    assert {k.__name__: len(k.signatures) for k in expected} == {
        k.__name__: n for k, n in expected.items()
    }


def test_warmup_alone_compiles_every_kernel() -> None:
    # In a fresh interpreter, so that no other test has called a kernel first.
    code = (
        "import tiles\n"
        "from tiles import index, raster, vector\n"
        "tiles.warmup()\n"
        "ks = [index._query, vector._encode_layer, raster._fill, raster._outline_kernel,"
        " raster._scanlines]\n"
        "print([len(k.signatures) for k in ks])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split("\n")[-2] == "[1, 1, 2, 1, 1]"
