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
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.aggregate import parent_index, strictly_sorted
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
        self._lock = threading.Lock()

    def hash_one(self, device_id: str) -> int:
        """Return the keyed hash of one id (signed 64-bit)."""
        h = self._cache.get(device_id)
        if h is None:
            digest = hashlib.blake2b(device_id.encode(), key=self._key, digest_size=8).digest()
            h = self._cache[device_id] = int.from_bytes(digest, "little", signed=True)
        return h

    def replace_ids(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Replace the ``device_id`` column (str or Categorical) by ``device`` (keyed hash).

        Thread-safe: parts of one unit may be hashed on several threads.
        """
        ids = frame["device_id"]
        if isinstance(ids.dtype, pl.Categorical):
            # Map through the integer codes: only ids not seen before are turned into strings.
            codes = ids.to_physical().to_numpy()
            with self._lock:
                by_code = self._codes_to_hashes(ids, codes)
            out = frame.with_columns(device=pl.Series("device", by_code[codes])).drop("device_id")
        else:
            uniq = ids.unique()
            with self._lock:
                hashes = [self.hash_one(u) for u in uniq.cast(pl.String).to_list()]
            mapping = pl.DataFrame({"device_id": uniq, "device": pl.Series(hashes, dtype=pl.Int64)})
            out = frame.join(mapping, on="device_id", how="left").drop("device_id")
        return out.select("w", "device", *[c for c in out.columns if c not in ("w", "device")])

    def _codes_to_hashes(
        self, ids: pl.Series, codes: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.int64]:
        """Hash the ids whose codes are new; return the code -> hash table."""
        top = int(codes.max()) + 1 if len(codes) else 0
        if top > len(self._known):
            grow = max(top, 2 * len(self._known))
            self._by_code = np.concatenate(
                [self._by_code, np.zeros(grow - len(self._by_code), np.int64)]
            )
            self._known = np.concatenate([self._known, np.zeros(grow - len(self._known), bool)])
        rows = np.flatnonzero(~self._known[codes])
        if rows.size:
            new, first = np.unique(codes[rows], return_index=True)
            strings = ids.gather(rows[first]).cast(pl.String).to_list()
            self._by_code[new] = [self.hash_one(u) for u in strings]
            self._known[new] = True
        return self._by_code


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
    w_all = counts["w"].to_numpy().astype(np.int64, copy=False)
    cell_all = counts["cell"].to_numpy().astype(np.uint64, copy=False)
    dev_all = counts["devices"].to_numpy().astype(np.int64, copy=False)
    order = None
    if not strictly_sorted(res_all, w_all, cell_all):  # rollup's output is sorted already
        order = np.lexsort((cell_all, w_all, res_all))
        res_all, w_all, cell_all, dev_all = (
            res_all[order],
            w_all[order],
            cell_all[order],
            dev_all[order],
        )
    pub_all = dev_all >= k_min
    levels = sorted(int(r) for r in np.unique(res_all))
    bounds = np.searchsorted(res_all, levels + [levels[-1] + 1] if levels else [])
    # up[i]: row (within level i - 1) of each level-i cell's parent; deeper ancestors are
    # found by following these maps, one gather per level.
    up: list[npt.NDArray[np.intp]] = []
    for i in range(len(levels)):
        a, b = int(bounds[i]), int(bounds[i + 1])
        w_s, cell_s, dev_s, pub_s = w_all[a:b], cell_all[a:b], dev_all[a:b], pub_all[a:b]
        up.append(parent_index(w_s, cell_s, levels[i - 1]) if i else np.zeros(0, np.intp))
        weights = np.where(pub_s, dev_s, 0)
        pidx = np.arange(b - a)
        for j in range(i - 1, -1, -1):  # coarser levels, nearest first
            pidx = up[j + 1][pidx]
            ra, rb = int(bounds[j]), int(bounds[j + 1])
            covered = np.bincount(pidx, weights=weights, minlength=rb - ra)
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
            weights = np.where(pub_s, dev_s, 0)
    if order is None:
        return pl.Series("published", pub_all)
    published = np.empty(len(order), dtype=bool)
    published[order] = pub_all
    return pl.Series("published", published)


def laplace_noise(n: int, scale: float, seed: bytes | int | None = None) -> npt.NDArray[np.float64]:
    """Return ``n`` Laplace(0, scale) draws; a ``seed`` makes them reproducible."""
    if isinstance(seed, bytes):
        seed = int.from_bytes(hashlib.blake2b(seed, digest_size=16).digest(), "little")
    rng = np.random.default_rng(seed)
    return rng.laplace(0.0, scale, n)
