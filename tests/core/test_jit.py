"""The core's compiled kernels: loaded lazily, all at once on request, one signature each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def _run(code: str, tmp: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout.strip().split("\n")


def test_opening_a_store_loads_no_kernel(tmp_path: Path) -> None:
    assert _run(_LAZY, tmp_path)[-1] == "False"


def test_a_warmed_process_compiles_nothing_more_to_ingest(tmp_path: Path) -> None:
    # deviceids._encode has two: string and large_string offsets (int32, int64).
    out = _run(_WARMED, tmp_path)
    assert out[-2] == "[1, 1, 1, 1, 2] [1, 1, 1, 1, 2] 6"
    # pyarrow imports pandas (0.25 s) on the first to_numpy, array or scalar call: the
    # kernels' warm-up and the ingest path read Arrow buffers directly instead.
    assert out[-1] == "False"
