"""The core's compiled kernels: ``Heatmap`` warms them all, with the types an ingest uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs in a fresh interpreter, so that no other test has called a kernel first: opening a store
# warms every kernel; ingesting Parquet (dictionary-encoded ids) and a CSV must then compile
# nothing more (one signature each), or the first real ingest would wait for the compiler.
_CODE = """
import sys
from pathlib import Path
import polars as pl
from heatmap import aggregate, cellindex, ingest
from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.service import Heatmap
tmp = Path(sys.argv[1])
hm = Heatmap(Settings(db=str(tmp / "s.db"), secret="t"))
ks = [aggregate._latest_dense, aggregate._dense_has_ties, ingest._seconds_if_valid,
      ingest._newlines, cellindex._cells_kernel]
before = [len(k.signatures) for k in ks]
frame = pl.DataFrame({"device_id": ["a", "b", "a"], "ts": [1_700_000_000, 1_700_000_100,
                      1_700_000_900], "lat": [31.2, 31.3, 31.25], "lng": [121.4, 121.5, 121.45]})
frame.write_parquet(tmp / "p.parquet")
frame.with_columns(pl.col("ts") + 3600).write_csv(tmp / "p.csv")  # an hour later
# chunk_rows=1: the CSV is cut into ranges (each counted) as a large one would be
report = hm.ingest_paths([tmp / "p.parquet", tmp / "p.csv"], ParseOptions(chunk_rows=1))
print(before, [len(k.signatures) for k in ks], report.accepted)
"""


def test_opening_a_store_warms_every_kernel_an_ingest_uses(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CODE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.stdout.split("\n")[-2] == "[1, 1, 1, 1, 1] [1, 1, 1, 1, 1] 6"
