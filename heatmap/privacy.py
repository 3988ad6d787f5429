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

from heatmap.aggregate import parent_index
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
        # Hashes by polars' (process-global, stable) categorical code: ids seen in an earlier
        # chunk cost one numpy gather, not a dictionary lookup each.
        self._by_code = np.zeros(0, dtype=np.int64)
        self._known = np.zeros(0, dtype=bool)

    def hash_one(self, device_id: str) -> int:
        """Return the keyed hash of one id (signed 64-bit)."""
        h = self._cache.get(device_id)
        if h is None:
            digest = hashlib.blake2b(device_id.encode(), key=self._key, digest_size=8).digest()
            h = self._cache[device_id] = int.from_bytes(digest, "little", signed=True)
        return h

    def replace_ids(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Replace the ``device_id`` column (str or Categorical) by ``device`` (keyed hash)."""
        ids = frame["device_id"]
        uniq = ids.unique()
        if isinstance(ids.dtype, pl.Categorical):
            # Map through the integer codes: no string is materialised per row.
            codes = uniq.to_physical().to_numpy().astype(np.int64)
            top = int(codes.max()) + 1 if len(codes) else 0
            if top > len(self._known):
                grow = max(top, 2 * len(self._known))
                self._by_code = np.concatenate(
                    [self._by_code, np.zeros(grow - len(self._by_code), np.int64)]
                )
                self._known = np.concatenate([self._known, np.zeros(grow - len(self._known), bool)])
            new = ~self._known[codes]
            if new.any():
                strings = uniq.filter(pl.Series(new)).cast(pl.String).to_list()
                self._by_code[codes[new]] = [self.hash_one(u) for u in strings]
                self._known[codes[new]] = True
            device = pl.Series("device", self._by_code[ids.to_physical().to_numpy()])
            out = frame.with_columns(device=device).drop("device_id")
        else:
            hashes = [self.hash_one(u) for u in uniq.cast(pl.String).to_list()]
            mapping = pl.DataFrame({"device_id": uniq, "device": pl.Series(hashes, dtype=pl.Int64)})
            out = frame.join(mapping, on="device_id", how="left").drop("device_id")
        return out.select("w", "device", *[c for c in out.columns if c not in ("w", "device")])


def suppress(counts: pl.DataFrame, k_min: int) -> pl.Series:
    """Return which rows of rolled-up counts may be published (rules 2 and 3).

    Parameters
    ----------
    counts
        Columns ``w``, ``res``, ``cell``, ``devices``: exact roll-ups of the finest resolution,
        for any number of windows (as made by ``aggregate.rollup``).
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
    res_all = counts["res"].to_numpy()
    w_all = counts["w"].to_numpy().astype(np.int64)
    cell_all = counts["cell"].to_numpy().astype(np.uint64)
    dev_all = counts["devices"].to_numpy().astype(np.int64)
    order = None
    if not _is_sorted(res_all, w_all, cell_all):  # rollup's output is sorted already
        order = np.lexsort((cell_all, w_all, res_all))
        res_all, w_all, cell_all, dev_all = (
            res_all[order],
            w_all[order],
            cell_all[order],
            dev_all[order],
        )
    pub_all = dev_all >= k_min
    levels = sorted(int(r) for r in np.unique(res_all))
    span = {
        r: (int(np.searchsorted(res_all, r)), int(np.searchsorted(res_all, r, "right")))
        for r in levels
    }
    for i, s in enumerate(levels):
        a, b = span[s]
        w_s, cell_s, dev_s, pub_s = w_all[a:b], cell_all[a:b], dev_all[a:b], pub_all[a:b]
        for r in reversed(levels[:i]):
            ra, rb = span[r]
            pidx = parent_index(w_s, cell_s, r)
            covered = np.bincount(pidx, weights=np.where(pub_s, dev_s, 0), minlength=rb - ra)
            remainder = dev_all[ra:rb] - covered.astype(np.int64)
            bad = pub_all[ra:rb] & (remainder > 0) & (remainder < k_min)
            if not bad.any():
                continue
            cand = np.flatnonzero(pub_s & bad[pidx])
            # The smallest published cell under each bad parent (ties: the smaller cell id).
            cand = cand[np.lexsort((cell_s[cand], dev_s[cand], pidx[cand]))]
            first = np.ones(len(cand), dtype=bool)
            first[1:] = pidx[cand][1:] != pidx[cand][:-1]
            pub_s[cand[first]] = False  # a view into pub_all
    if order is None:
        return pl.Series("published", pub_all)
    published = np.empty(len(order), dtype=bool)
    published[order] = pub_all
    return pl.Series("published", published)


def _is_sorted(res: np.ndarray, w: np.ndarray, cell: np.ndarray) -> bool:
    if len(res) < 2:
        return True
    dr, dw = np.diff(res.astype(np.int64)), np.diff(w)
    up = (dr > 0) | ((dr == 0) & (dw > 0)) | ((dr == 0) & (dw == 0) & (cell[1:] > cell[:-1]))
    return bool(up.all())


def laplace_noise(n: int, scale: float, seed: bytes | int | None = None) -> npt.NDArray[np.float64]:
    """Return ``n`` Laplace(0, scale) draws; a ``seed`` makes them reproducible."""
    if isinstance(seed, bytes):
        seed = int.from_bytes(hashlib.blake2b(seed, digest_size=16).digest(), "little")
    rng = np.random.default_rng(seed)
    return rng.laplace(0.0, scale, n)
