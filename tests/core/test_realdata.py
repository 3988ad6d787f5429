"""The real GeoLife file (179 people, Beijing): exact counts, privacy rules, nothing identifying.

Runs in CI, where ../shared/data is present; elsewhere it skips with that reason.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import h3
import numpy as np
import polars as pl
import pytest

from heatmap.ingest import ParseOptions
from heatmap.policy import PublishPolicy
from heatmap.privacy import DeviceHasher
from heatmap.publish import counts_to_published
from heatmap.service import Heatmap
from tests.conftest import read_geolife_rows, reference_counts
from tests.core.test_privacy import rule3_violations

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
BASE, LOW = 10, 5


@pytest.fixture(scope="module")
def ingested(geolife: Path, tmp_path_factory: pytest.TempPathFactory):
    from heatmap.config import Settings

    db = tmp_path_factory.mktemp("geolife") / "heatmap.db"
    s = Settings(db=str(db), k_min=2, secret="realdata-test", basemap_url="")
    hm = Heatmap(s)
    report = hm.ingest_paths([geolife], ParseOptions())
    rows = read_geolife_rows()
    ref = reference_counts(rows, s.window_s, BASE, LOW)
    yield hm, report, rows, ref
    hm.close()


def _blobs(
    hm: Heatmap, table: str, dtypes: tuple[type, ...], names: tuple[str, ...]
) -> pl.DataFrame:
    """Read every stored blob of a table in one query (the embedded store's layout)."""
    from heatmap.store.codec import blob_to_arrays

    con = sqlite3.connect(hm.settings.db)
    cols: list[list[np.ndarray]] = [[] for _ in names]
    ws = []
    for w, data in con.execute(f"SELECT w, data FROM {table}"):  # noqa: S608 - fixed names
        arrays = list(blob_to_arrays(data, dtypes))
        ws.append(np.full(len(arrays[0]), w, dtype=np.int64))
        for col, arr in zip(cols, arrays, strict=True):
            col.append(arr)
    frame = pl.DataFrame({"w": np.concatenate(ws)})
    for name, col in zip(names, cols, strict=True):
        frame = frame.with_columns(pl.Series(name, np.concatenate(col)))
    return frame.with_columns(pl.col("cell").cast(pl.Int64).reinterpret(signed=False))


def _closed_base_counts(hm: Heatmap) -> pl.DataFrame:
    return _blobs(hm, "base_counts", (np.int64, np.int64), ("cell", "devices"))


def _stored_published(hm: Heatmap) -> pl.DataFrame:
    return _blobs(hm, "published", (np.int64, np.int64, np.float64), ("res", "cell", "people"))


def test_every_row_is_accounted_for(ingested) -> None:
    _hm, report, rows, _ref = ingested
    s = report.summary()
    assert s["accepted"] + s["rejected"] + s["late"] == len(rows)
    assert s["late"] == 0


def test_base_counts_equal_the_plain_h3_reference(ingested) -> None:
    hm, _report, _rows, ref = ingested
    base = _closed_base_counts(hm)
    closed = set(base["w"].unique().to_list())
    got = {(w, h3.int_to_str(c)): d for w, c, d in base.rows()}
    want = {(w, c): d for (w, r, c), d in ref.items() if r == BASE and w in closed}
    assert got == want


@pytest.mark.parametrize("k", [2, 10])
def test_published_numbers_are_exact_and_private(ingested, k: int) -> None:
    hm, _report, _rows, ref = ingested
    base = _closed_base_counts(hm)
    settings = hm.settings.model_copy(update={"k_min": k})
    policy = PublishPolicy.from_settings(settings)
    pub = counts_to_published(base, policy) if k != 2 else _stored_published(hm)
    closed = set(base["w"].unique().to_list())
    eligible = {key: d for key, d in ref.items() if key[0] in closed and d >= k}
    published = {
        (w, r, h3.int_to_str(c)): p
        for w, r, c, p in pub.select("w", "res", "cell", "people").rows()
    }
    # Every published number equals the reference, and nothing below k is published.
    for key, people in published.items():
        assert people == ref[key]
        assert people >= k
    # Rule 3 per window, on a sample of the busiest windows (the check is quadratic).
    by_w: dict[int, dict] = {}
    for (w, r, c), p in published.items():
        by_w.setdefault(w, {})[(r, c)] = int(p)
    for w in sorted(by_w, key=lambda x: -len(by_w[x]))[:40]:
        assert rule3_violations(by_w[w], k) == []
    withheld = [key for key in eligible if key not in published]
    base_eligible = [key for key in eligible if key[1] == BASE]
    base_withheld = [key for key in withheld if key[1] == BASE]
    share = len(base_withheld) / max(len(base_eligible), 1)
    print(
        f"k={k}: {len(base_withheld)} of {len(base_eligible)} base cells "
        f"withheld for rule 3 ({share:.1%})"
    )
    assert share < 0.35


def test_nothing_identifying_on_disk(ingested) -> None:
    hm, _report, rows, _ref = ingested
    db = Path(hm.settings.db)
    ids = sorted({r[0] for r in rows})
    hasher = DeviceHasher(hm.key)
    open_ws = {w.w for w in hm.store.windows() if not w.closed}
    open_devices = {d for d, ts, _a, _b in rows if ts // hm.settings.window_s in open_ws}
    closed_only = [d for d in ids if d not in open_devices]
    blob = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert closed_only  # the file ends with fewer devices than it holds
    for d in closed_only:
        for order in ("big", "little"):  # SQLite records are big-endian, numpy blobs little
            assert hasher.hash_one(d).to_bytes(8, order, signed=True) not in blob
    # Positive control: the hashes of the open window's devices are found in the ping log's
    # blobs (the search works: keyed hashes do not compress, zstd keeps them as literals).
    # (but for the few split across two overflow pages).
    seen = sum(hasher.hash_one(d).to_bytes(8, "little", signed=True) in blob for d in open_devices)
    assert open_devices and seen >= 0.9 * len(open_devices)
    # No text value anywhere in the store is a raw device id.
    con = sqlite3.connect(db)
    tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    texts = set()
    for t in tables:
        for row in con.execute(f"SELECT * FROM {t}"):  # noqa: S608 - our own table names
            texts.update(v for v in row if isinstance(v, str))
    assert not texts & set(ids)
