"""Ping files for the ingest benchmark, written as users' tools write them.

- :func:`crowd_pings` is an independent generator (no project code): devices pinging every
  30-60 s around a number of centres, ids as plain strings, sorted by time as a feed is.
- :func:`write_variants` writes one table as Parquet with dictionary-encoded ids, Parquet with
  plain ids (``pyarrow.parquet.write_table``, a fixed number of row groups), CSV and CSV.gz.
- :func:`polars_h3_peer` is the peer: polars reads the same file and polars-h3 indexes every
  ping (the whole job of a user who would count pings with polars).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

T0 = 1_764_000_000 // 3600 * 3600  # a whole hour, 2025-11-24


def crowd_pings(
    devices: int = 160_000, hours: float = 1.0, centres: int = 200, seed: int = 11
) -> pa.Table:
    """Return pings of ``devices`` phones around ``centres`` points near Shanghai.

    Each device stays near one centre (normal scatter of ~1.5 km, a slow drift) and pings at
    its own interval, uniform in 30-60 s, from a random phase; ids are 16-character hex
    strings. Rows are sorted by time. About ``devices * hours * 80`` pings.
    """
    rng = np.random.default_rng(seed)
    c_lat = 31.23 + rng.normal(0, 0.12, centres)
    c_lng = 121.47 + rng.normal(0, 0.15, centres)
    home = rng.integers(0, centres, devices)
    interval = rng.uniform(30.0, 60.0, devices)
    phase = rng.uniform(0.0, 1.0, devices) * interval
    span = hours * 3600.0
    counts = np.floor((span - phase) / interval).astype(np.int64) + 1
    dev = np.repeat(np.arange(devices), counts)
    k = np.arange(len(dev)) - np.repeat(np.cumsum(counts) - counts, counts)
    t = phase[dev] + k * interval[dev]
    order = np.argsort(t, kind="stable")
    dev, t = dev[order], t[order]
    drift = rng.normal(0, 0.0002, (2, devices))
    lat = c_lat[home[dev]] + rng.normal(0, 0.0135, devices)[dev] + drift[0][dev] * t / 60
    lng = c_lng[home[dev]] + rng.normal(0, 0.016, devices)[dev] + drift[1][dev] * t / 60
    lat += rng.normal(0, 0.0002, len(dev))
    lng += rng.normal(0, 0.0002, len(dev))
    ids = np.array([f"{x:016x}" for x in rng.integers(0, 1 << 62, devices)], dtype=object)
    return pa.table(
        {
            "device_id": pa.array(ids[dev], pa.string()),
            "ts": pa.array(T0 + t.astype(np.int64), pa.int64()),
            "lat": pa.array(lat),
            "lng": pa.array(lng),
        }
    )


def write_variants(table: pa.Table, folder: Path, row_groups: int = 13) -> dict[str, Path]:
    """Write ``table`` as Parquet with dictionary ids (an arrow dictionary column, as pandas
    categories and ``heatmap simulate`` write them), Parquet with plain text ids
    (``pyarrow.parquet.write_table`` defaults: dictionary pages until the dictionary passes
    1 MiB, plain pages after), CSV (``pyarrow.csv.write_csv``: quoted text) and CSV.gz, in
    ``row_groups`` row groups."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = table["device_id"].cast(pa.string())
    text = table.set_column(0, "device_id", ids)
    group = -(-table.num_rows // row_groups)
    out = {
        "Parquet dictionary": folder / "dict.parquet",
        "Parquet plain": folder / "plain.parquet",
        "CSV": folder / "pings.csv",
        "CSV.gz": folder / "pings.csv.gz",
    }
    coded = text.set_column(0, "device_id", ids.dictionary_encode())
    pq.write_table(coded, out["Parquet dictionary"], row_group_size=group)
    pq.write_table(text, out["Parquet plain"], row_group_size=group)
    pacsv.write_csv(text, out["CSV"])
    with out["CSV"].open("rb") as src, gzip.open(out["CSV.gz"], "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    return out


POLARS_H3 = """
import sys
import polars as pl
import polars_h3 as plh3
path = sys.argv[1]
if path.endswith(".parquet"):
    df = pl.read_parquet(path)
else:
    df = pl.read_csv(path)
out = df.select(plh3.latlng_to_cell("lat", "lng", 10, return_dtype=pl.UInt64))
print(out.height)
"""
"""The peer as a whole process: read the file with polars, index every ping with polars-h3."""
