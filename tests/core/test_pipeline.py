"""The parallel file pipeline against plain h3-py: any chunking, any row order, both formats.

Files are read in chunks on worker threads, windows the input has moved past are indexed and
counted ahead of the commit, and a window that a later chunk reaches again must be recounted.
Every published number of every window must equal the h3-py reference whatever the order.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import h3
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.read import Reader
from heatmap.service import Heatmap
from tests.conftest import reference_counts

T0 = 1_764_000_000 // 300 * 300
NOW = T0 + 86_400.0

rows_strategy = st.lists(
    st.tuples(
        st.sampled_from([f"dev{i}" for i in range(20)]),
        st.integers(T0, T0 + 2400),  # eight windows
        st.floats(31.15, 31.30),
        st.floats(121.40, 121.55),
    ),
    min_size=1,
    max_size=300,
)


def _order(rows: list, how: str, rnd: random.Random) -> list:
    if how == "by time":
        return sorted(rows, key=lambda r: r[1])
    if how == "by device":  # every chunk spans every window: nothing ripens early
        return sorted(rows, key=lambda r: (r[0], r[1]))
    if how == "mostly by time":  # a few stragglers reach windows already settled
        out = sorted(rows, key=lambda r: r[1])
        for _ in range(max(1, len(out) // 20)):
            i, j = rnd.randrange(len(out)), rnd.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        return out
    out = list(rows)
    rnd.shuffle(out)
    return out


def _write(rows: list, path: Path, group_rows: int) -> None:
    frame = pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        pq.write_table(frame.to_arrow(), path, row_group_size=group_rows)


def _published(hm: Heatmap) -> dict[tuple[int, int, str], int]:
    out = {}
    reader = Reader.of(hm)
    for info in hm.store.windows():
        for res, snap in reader.snapshots(info).items():
            assert len(set(snap.cells.tolist())) == len(snap.cells), "a cell published twice"
            for cell, people in zip(snap.cells.tolist(), snap.people.tolist(), strict=True):
                out[(info.w, res, h3.int_to_str(cell))] = round(people)
    return out


@settings(max_examples=200, deadline=None)
@given(
    rows=rows_strategy,
    chunk_rows=st.integers(1, 40),
    group_rows=st.integers(1, 60),  # row groups up to twice chunk_rows are read whole
    how=st.sampled_from(["by time", "by device", "mostly by time", "shuffled"]),
    fmt=st.sampled_from([".parquet", ".parquet", ".csv"]),  # CSV: 16 MB blocks, one chunk
    rnd=st.randoms(use_true_random=False),
)
def test_any_chunking_and_row_order_publish_the_h3_reference(
    rows: list, chunk_rows: int, group_rows: int, how: str, fmt: str, rnd: random.Random
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"pings{fmt}"
        _write(_order(rows, how, rnd), path, group_rows)
        s = Settings(
            db=str(Path(tmp) / "store" / "h.db"),
            secret="test",
            basemap_url="",
            k_min=1,  # nothing suppressed: every count is visible
            allowed_lateness_s=0,
            min_res=8,
        )
        hm = Heatmap(s)
        report = hm.ingest_paths([path], ParseOptions(now=NOW, chunk_rows=chunk_rows))
        assert report.accepted == len(rows) and report.rejects.total == 0
        assert _published(hm) == reference_counts(rows, 300, s.base_res, 8)
        hm.close()


def test_a_window_reached_again_by_a_late_chunk_is_recounted(tmp_path: Path) -> None:
    """Chunk 1 covers windows 0-1, chunk 2 window 3 (settling 0-1 ahead), chunk 3 returns to
    window 0: window 0 must count the device of chunk 3 too."""
    a, b = (31.2300, 121.4700), (31.2500, 121.4900)
    rows = [
        ("d1", T0 + 10, *a),
        ("d2", T0 + 320, *a),
        ("d3", T0 + 910, *b),
        ("d4", T0 + 20, *b),
    ]
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {k: [r[i] for r in rows] for i, k in enumerate(["device_id", "ts", "lat", "lng"])}
        ),
        path,
        row_group_size=1,
    )
    s = Settings(db=str(tmp_path / "h.db"), secret="t", basemap_url="", k_min=1, min_res=9)
    hm = Heatmap(s)
    hm.ingest_paths([path], ParseOptions(now=NOW, chunk_rows=1))
    assert _published(hm) == reference_counts(rows, 300, s.base_res, 9)
    first = next(i for i in hm.store.windows() if i.w == T0 // 300)
    assert first.devices == 2


def test_cell_areas_are_h3s_whether_remembered_or_new() -> None:
    """Areas come from a bounded table of cells seen before: hits, misses, repeats and a table
    that starts over at its limit all answer h3-py's exact area, in the asked order."""
    import h3
    import numpy as np

    from heatmap.publish import _Areas, _exact_area_km2

    cells = np.array(
        [h3.str_to_int(h3.latlng_to_cell(31.2 + i * 0.013, 121.4, r)) for i in range(40)
         for r in (5, 8, 10)],
        dtype=np.uint64,
    )  # fmt: skip
    want = {int(c): h3.cell_area(h3.int_to_str(int(c)), unit="km^2") for c in cells}
    areas = _Areas(limit=70)
    for part in (cells[:30], cells[10:60], cells[::-1], np.repeat(cells[:5], 3), cells[60:]):
        got = areas.lookup(part)
        assert got.tolist() == _exact_area_km2(part).tolist()  # bit for bit what polars-h3 says
        assert np.allclose(got, [want[int(c)] for c in part], rtol=1e-9, atol=0)
