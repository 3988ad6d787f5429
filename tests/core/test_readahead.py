"""``heatmap ingest`` decodes a Parquet file's first chunk while it imports: the counts are the
same as without it (and as a plain h3-py reference), the chunk read ahead is the one the task
uses, a file changed meanwhile is read again, and a broken file still fails with its reason.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from heatmap.config import Settings
from heatmap.ingest import ParseOptions, readahead
from heatmap.service import Heatmap
from tests.conftest import published_counts, reference_counts

T0 = 1_764_000_000 // 300 * 300
NOW = T0 + 86_400.0
ROWS = 12_000
CHUNK = 500  # rows a task reads: two row groups of 250


def _write(path: Path, seed: int = 7) -> pd.DataFrame:
    """Pings of 200 devices over 40 minutes, plain text ids, row groups of 250 rows."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "device_id": [f"dev-{d:05d}" for d in rng.integers(0, 200, ROWS)],
            "ts": np.sort(rng.integers(T0, T0 + 2_400, ROWS)),
            "lat": 31.23 + rng.normal(0, 0.01, ROWS),
            "lng": 121.47 + rng.normal(0, 0.01, ROWS),
        }
    )
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=250)
    return df


def _reference(df: pd.DataFrame) -> dict[tuple[int, str], int]:
    """The plain h3-py reference, the windows before the last (which stays open)."""
    rows = list(df.itertuples(index=False, name=None))
    ref = reference_counts(rows, 300, 10, 10)
    top = max(w for w, _, _ in ref)
    return {(w, cell): n for (w, _, cell), n in ref.items() if w < top}


def _ingest(path: Path, tmp: Path) -> dict[tuple[int, str], int]:
    s = Settings(
        db=str(tmp / "h.db"), secret="t", basemap_url="", k_min=1, allowed_lateness_s=0, min_res=10
    )
    hm = Heatmap(s)
    report = hm.ingest_paths([path], ParseOptions(now=NOW, chunk_rows=CHUNK))
    assert report.accepted == ROWS
    out = published_counts(hm, 10)
    hm.close()
    top = max(w for w, _ in out)  # the last window stays open (no later ping)
    return {k: v for k, v in out.items() if k[0] < top}


@pytest.fixture
def any_size(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], bool]]:
    """Read ahead files of any size; record each ``take`` (the groups, and whether it hit)."""
    monkeypatch.setattr(readahead, "_MIN_BYTES", 0)
    taken: list[tuple[list[int], bool]] = []
    real = readahead.take

    def spy(path: Path, groups: list[int], *rest: object) -> pa.Table | None:
        got = real(path, groups, *rest)  # type: ignore[arg-type]
        taken.append((list(groups), got is not None))
        return got

    monkeypatch.setattr("heatmap.ingest.parquet.take", spy)
    return taken


def _wait_until_read(path: Path) -> None:
    """Wait for the read-ahead thread to have decoded its chunk."""
    for _ in range(500):
        with readahead._LOCK:
            futures = [f for k, f in readahead._AHEAD.items() if k[0] == str(path.resolve())]
        if futures and all(f.done() for f in futures):
            return
        time.sleep(0.01)
    raise AssertionError("nothing was read ahead")


def test_the_chunk_read_ahead_is_the_one_counted(
    tmp_path: Path, any_size: list[tuple[list[int], bool]]
) -> None:
    path = tmp_path / "p.parquet"
    df = _write(path)
    readahead.start(path, CHUNK)
    _wait_until_read(path)
    ahead = _ingest(path, tmp_path / "a")
    # The first chunk (its two row groups) came from the read-ahead; the others were read by
    # their tasks (in whatever order the two workers took them).
    assert [g for g, hit in any_size if hit] == [[0, 1]]
    assert len(any_size) > 1 and ([0, 1], False) not in any_size
    assert not readahead._AHEAD  # nothing left behind
    without = _ingest(path, tmp_path / "b")
    assert ahead == without
    assert ahead == _reference(df)


def test_a_file_changed_after_its_read_ahead_is_read_again(
    tmp_path: Path, any_size: list[tuple[list[int], bool]]
) -> None:
    path = tmp_path / "p.parquet"
    _write(path, seed=1)
    readahead.start(path, CHUNK)
    _wait_until_read(path)
    df = _write(path, seed=2)  # another file at the same path
    counts = _ingest(path, tmp_path / "a")
    assert all(not hit for _, hit in any_size)
    assert counts == _reference(df)
    assert not readahead._AHEAD  # the stale chunk was dropped, not kept


def test_text_and_small_files_are_not_read_ahead(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("device_id,ts,lat,lng\na,1764000000,31.2,121.5\n")
    small = tmp_path / "p.parquet"
    _write(small)
    for path in (csv, small, tmp_path / "missing.parquet"):
        readahead.start(path, CHUNK)
    time.sleep(0.05)
    assert not readahead._AHEAD


def test_a_broken_file_read_ahead_still_fails_with_its_reason(tmp_path: Path) -> None:
    """The CLI reads ahead a file whose footer is garbage: the read-ahead gives up quietly and
    the ingest names the problem, exit 2."""
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + bytes(range(256)) * 40_000 + b"PAR1")  # past _MIN_BYTES
    out = subprocess.run(
        [sys.executable, "-m", "heatmap", "ingest", str(path)],
        capture_output=True,
        text=True,
        env={"HEATMAP_DB": str(tmp_path / "h.db"), "HEATMAP_SECRET": "t", "PATH": "/usr/bin"},
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert str(path) in out.stderr and "Traceback" not in out.stderr
