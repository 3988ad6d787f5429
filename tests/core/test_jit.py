"""The core's compiled kernels: loaded lazily, all at once on request, one signature each;
built ahead of time, used without numba, with the same results, and only where they fit."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heatmap import _jit

# Fresh interpreters, so that no other test has loaded numba first.
_LAZY = """
import sys
from pathlib import Path
from heatmap.config import Settings
from heatmap.service import Heatmap
hm = Heatmap(Settings(db=str(Path(sys.argv[1]) / "s.db"), secret="t"))
print("numba" in sys.modules)
"""

# warmup(now=True) loads every kernel; ingesting Parquet (dictionary-encoded ids) and a CSV
# must then compile nothing more (one signature each), or the first real ingest of a
# long-lived process would wait for the compiler.
_WARMED = """
import sys
from pathlib import Path
import polars as pl
from heatmap import _jit, aggregate, cellindex, deviceids
from heatmap.ingest import validate
from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.service import Heatmap
tmp = Path(sys.argv[1])
hm = Heatmap(Settings(db=str(tmp / "s.db"), secret="t"))
_jit.warmup(now=True)
ks = [aggregate._latest_dense, aggregate._dense_has_ties, validate._seconds_if_valid,
      cellindex._cells_kernel, deviceids._encode]
before = [len(k.signatures) for k in ks]
frame = pl.DataFrame({"device_id": ["a", "b", "a"], "ts": [1_700_000_000, 1_700_000_100,
                      1_700_000_900], "lat": [31.2, 31.3, 31.25], "lng": [121.4, 121.5, 121.45]})
frame.write_parquet(tmp / "p.parquet")
frame.with_columns(pl.col("ts") + 3600).write_csv(tmp / "p.csv")  # an hour later
# chunk_rows=1: the CSV is cut into blocks (each counted) as a large one would be
report = hm.ingest_paths([tmp / "p.parquet", tmp / "p.csv"], ParseOptions(chunk_rows=1))
print(before, [len(k.signatures) for k in ks], report.accepted)
print("pandas" in sys.modules)
"""


def _run(code: str, tmp: Path, aot: bool = True) -> list[str]:
    env = {**os.environ, "HEATMAP_AOT": "1" if aot else "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=env,
    )
    return out.stdout.strip().split("\n")


def test_opening_a_store_loads_no_kernel(tmp_path: Path) -> None:
    assert _run(_LAZY, tmp_path)[-1] == "False"


def test_a_warmed_process_compiles_nothing_more_to_ingest(tmp_path: Path) -> None:
    # deviceids._encode has two: string and large_string offsets (int32, int64).
    out = _run(_WARMED, tmp_path, aot=False)  # the numba path (the build is checked below)
    assert out[-2] == "[1, 1, 1, 1, 2] [1, 1, 1, 1, 2] 6"
    # pyarrow imports pandas (0.25 s) on the first to_numpy, array or scalar call: the
    # kernels' warm-up and the ingest path read Arrow buffers directly instead.
    assert out[-1] == "False"


# Parquet of 4,000 pings (dictionary ids, plain ids) and a CSV with bad rows, ingested with the
# kernels in use from the first row; prints whether numba was imported, whether the
# ahead-of-time build served, and every published (window, cell, people) and the rejects.
_COUNTS = """
import json, sys
from pathlib import Path
import numpy as np
import polars as pl
import pyarrow.parquet as pq
from heatmap import _jit
from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.read import Reader
from heatmap.service import Heatmap
tmp = Path(sys.argv[1])
rng = np.random.default_rng(5)
n = 4000
t0 = 1_764_000_000 // 300 * 300
frame = pl.DataFrame({
    "device_id": [f"dev-{d}" for d in rng.integers(0, 300, n)],
    "ts": np.sort(rng.integers(t0, t0 + 3000, n)),
    "lat": 31.23 + rng.normal(0, 0.02, n),
    "lng": 121.47 + rng.normal(0, 0.02, n),
})
frame.write_parquet(tmp / "dict.parquet")
pq.write_table(frame.with_columns(pl.col("ts") + 3600).to_arrow(), tmp / "plain.parquet",
               use_dictionary=False)
csv = frame.with_columns(pl.col("ts") + 7200).write_csv()
csv = csv.replace("\\n", "\\nx,1,95,1\\n", 1)  # a bad row (lat out of range, ts in the past)
(tmp / "p.csv").write_text(csv)
hm = Heatmap(Settings(db=str(tmp / "s.db"), secret="t", k_min=1, min_res=10))
_jit.warmup(now=True)  # kernels from the first row (else small inputs take numpy paths)
report = hm.ingest_paths([tmp / "dict.parquet", tmp / "plain.parquet", tmp / "p.csv"],
                         ParseOptions(now=float(t0 + 86400)))
reader = Reader.of(hm)
out = []
for info in hm.store.windows():
    snap = reader.snapshots(info)[10]
    out += [[info.w, c, p] for c, p in zip(snap.cells.tolist(), snap.people.tolist())]
reader.close()
hm.close()
print(json.dumps({"numba": "numba" in sys.modules, "aot": bool(_jit._AOT_STATE),
                  "accepted": report.accepted, "rejects": dict(report.rejects.counts),
                  "published": sorted(out)}))
"""


def _built() -> bool:
    return bool(list(Path(_jit.__file__).parent.glob(f"{_jit.AOT_MODULE}.*.so")))


@pytest.fixture
def aot_build() -> None:
    """The ahead-of-time build (``make`` makes it; CI must have it)."""
    if not _built() or not _jit._open_aot():
        if os.environ.get("CI"):
            pytest.fail("the ahead-of-time kernels are missing or stale: `make kernels`")
        pytest.skip("no current ahead-of-time kernel build (`make kernels`)")


@pytest.mark.usefixtures("aot_build")
def test_the_ahead_of_time_kernels_count_what_numba_counts(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    native = json.loads(_run(_COUNTS, tmp_path / "a", aot=True)[-1])
    jitted = json.loads(_run(_COUNTS, tmp_path / "b", aot=False)[-1])
    # The build served every kernel call: numba was never imported.
    assert native["aot"] and not native["numba"]
    assert jitted["numba"] and not jitted["aot"]
    assert native["accepted"] == jitted["accepted"] == 3 * 4000
    assert native["rejects"] == jitted["rejects"] and sum(native["rejects"].values()) == 1
    assert len(native["published"]) > 100
    assert native["published"] == jitted["published"]


@pytest.mark.usefixtures("aot_build")
def test_a_call_the_build_does_not_fit_goes_to_numba(tmp_path: Path) -> None:
    """The native wrapper checks an array's dimensions, not its element type: a call with
    other types must not reach it (it would read int32 as int64), but run on numba."""
    code = """
import sys
import numpy as np
from heatmap import aggregate
w = np.array([0, 0, 1], dtype=np.int32)  # the build has int64 windows
codes = np.array([0, 0, 1], dtype=np.uint32)
ts = np.array([5, 9, 7], dtype=np.int64)
print(aggregate._latest_dense(w, codes, ts, 0, 2).tolist(), "numba" in sys.modules)
"""
    assert _run(code, tmp_path)[-1] == "[1, 2] True"


def test_argument_checks_follow_numba_typing() -> None:
    spec = ("array", np.dtype(np.int64), 1, "C", True)
    a = np.arange(4, dtype=np.int64)
    assert _jit._fits(spec, a)
    assert not _jit._fits(spec, a.astype(np.int32))  # element type
    assert not _jit._fits(spec, a.reshape(2, 2))  # dimensions
    assert not _jit._fits(spec, a[::2])  # not contiguous: numba types it "A"
    ro = a.view()
    ro.flags.writeable = False
    assert _jit._fits(spec, ro)
    assert not _jit._fits(("array", np.dtype(np.int64), 1, "C", False), ro)  # kernel writes it
    i64, u64, b = (("scalar", np.dtype(t)) for t in (np.int64, np.uint64, np.bool_))
    assert _jit._fits(i64, 5) and _jit._fits(i64, np.int64(5))
    assert not _jit._fits(i64, True) and not _jit._fits(i64, 1 << 63)
    assert not _jit._fits(u64, 5) and _jit._fits(u64, np.uint64(5))
    assert _jit._fits(b, False) and not _jit._fits(b, 0)
    pair = ("tuple", (spec, i64))
    assert _jit._fits(pair, (a, 3)) and not _jit._fits(pair, (a,))


@pytest.mark.usefixtures("aot_build")
def test_a_stale_build_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel's source changed since the build, or the CPU lacks one of its instructions:
    numba serves instead."""
    real = _jit.aot_stamp
    monkeypatch.setattr(
        _jit, "aot_stamp", lambda files: {**real(files), "files": dict.fromkeys(files, "0")}
    )
    assert _jit._open_aot() == {}
    monkeypatch.setattr(_jit, "aot_stamp", lambda files: {**real(files), "cpu_flags": []})
    assert _jit._open_aot() == {}
    monkeypatch.setattr(_jit, "aot_stamp", real)
    assert _jit._open_aot()
    # The build in use is named by its manifest (cellindex's record of a passed check).
    manifest = Path(_jit.__file__).with_name(f"{_jit.AOT_MODULE}.json").read_bytes()
    assert _jit._AOT_BUILD == hashlib.sha256(manifest).hexdigest()
