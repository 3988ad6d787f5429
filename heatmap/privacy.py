"""Privacy: keyed device hashing at the edge, k-anonymity with complementary suppression, DP noise.

Rules (DESIGN.md): (1) raw device ids never reach disk, only a keyed hash of open windows;
(2) nothing describing fewer than ``k_min`` devices is published; (3) no difference between a
published cell and the published cells of any finer resolution inside it is in ``1..k_min-1``;
(4) optional Laplace noise, drawn once per published value and kept.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.aggregate import cells_to_parent
from heatmap.errors import StoreUnavailable

SECRET_FILE = "secret.key"


def load_or_create_secret(secret: str | None, store_dir: Path) -> bytes:
    """Return the hashing key: ``HEATMAP_SECRET`` or a random key kept beside the store (0600)."""
    if secret:
        return hashlib.blake2b(secret.encode(), digest_size=32).digest()
    path = store_dir / SECRET_FILE
    try:
        if path.exists():
            key = path.read_bytes()
            if len(key) != 32:
                raise StoreUnavailable(
                    f"{path}: not a 32-byte key; remove it or set HEATMAP_SECRET"
                )
            return key
        store_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot keep the hashing key in {store_dir}: {exc.strerror}"
        ) from exc


class DeviceHasher:
    """Keyed 64-bit BLAKE2b of device ids, computed once per distinct id and remembered.

    The cache lives as long as one ingest; raw ids exist only in memory of the parsing step.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, int] = {}

    def hash_one(self, device_id: str) -> int:
        """Return the keyed hash of one id (signed 64-bit)."""
        h = self._cache.get(device_id)
        if h is None:
            digest = hashlib.blake2b(device_id.encode(), key=self._key, digest_size=8).digest()
            h = self._cache[device_id] = int.from_bytes(digest, "little", signed=True)
        return h

    def replace_ids(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Replace the ``device_id`` column by ``device`` (keyed hash, Int64)."""
        uniq = frame["device_id"].unique()
        mapping = pl.DataFrame(
            {
                "device_id": uniq,
                "device": pl.Series([self.hash_one(u) for u in uniq.to_list()], dtype=pl.Int64),
            }
        )
        out = frame.join(mapping, on="device_id", how="left").drop("device_id")
        return out.select("w", "device", *[c for c in out.columns if c not in ("w", "device")])


def suppress(counts: pl.DataFrame, k_min: int) -> pl.Series:
    """Return which rows of rolled-up counts may be published (rules 2 and 3).

    Parameters
    ----------
    counts
        Columns ``w``, ``res``, ``cell``, ``devices``: exact roll-ups of the finest resolution,
        for any number of windows.
    k_min
        Minimum number of devices a published number may describe.

    Returns
    -------
    Series
        Boolean ``published``, aligned with ``counts``.

    Notes
    -----
    Start from ``devices >= k_min``. Resolutions are settled coarse to fine; at a finer resolution
    ``s`` and for each coarser ``r`` (nearest first), a published parent ``P`` whose remainder
    ``P - sum(published cells of s inside P)`` is in ``1..k_min-1`` withholds its smallest
    published cell at ``s``. One always suffices: a published cell holds ``>= k_min`` devices,
    which lifts the remainder to ``>= k_min``. Withholding only raises remainders, so it never
    breaks a constraint already met, and finer resolutions never change coarser decisions.
    """
    df = counts.with_row_index("_i").with_columns(pub=pl.col("devices") >= k_min)
    by_res = {int(r[0]): part for r, part in df.partition_by("res", as_dict=True).items()}
    levels = sorted(by_res)
    for i, s in enumerate(levels):
        fine = by_res[s]
        for r in reversed(levels[:i]):
            coarse = by_res[r].filter("pub").select("w", "cell", "devices")
            kids = fine.with_columns(
                parent=pl.Series(cells_to_parent(fine["cell"].to_numpy(), r), dtype=pl.UInt64)
            )
            covered = kids.filter("pub").group_by("w", "parent").agg(cov=pl.col("devices").sum())
            bad = (
                coarse.join(covered, left_on=["w", "cell"], right_on=["w", "parent"], how="left")
                .with_columns(rem=pl.col("devices") - pl.col("cov").fill_null(0))
                .filter((pl.col("rem") > 0) & (pl.col("rem") < k_min))
                .select("w", parent="cell")
            )
            if not bad.height:
                continue
            withheld = (
                kids.filter("pub")
                .join(bad, on=["w", "parent"], how="semi")
                .sort("w", "parent", "devices", "cell")
                .unique(["w", "parent"], keep="first")["_i"]
            )
            fine = fine.with_columns(pub=pl.col("pub") & ~pl.col("_i").is_in(withheld.implode()))
        by_res[s] = fine
    out = pl.concat(by_res.values()).sort("_i")
    return out["pub"]


def laplace_noise(n: int, scale: float, seed: bytes | int | None = None) -> npt.NDArray[np.float64]:
    """Return ``n`` Laplace(0, scale) draws; a ``seed`` makes them reproducible."""
    if isinstance(seed, bytes):
        seed = int.from_bytes(hashlib.blake2b(seed, digest_size=16).digest(), "little")
    rng = np.random.default_rng(seed)
    return rng.laplace(0.0, scale, n)
