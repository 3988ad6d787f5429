"""Privacy: keyed device hashing at the edge, k-anonymity with complementary suppression.

Rules (DESIGN.md): (1) raw device ids never reach disk, only a keyed hash, and only while a
window or release still needs it;
(2) nothing describing fewer than ``k_min`` devices is published; (3) the *atom rule*: the H3
roll-up is a tree, so every number derivable by differencing a release (any mix of resolutions)
is a sum of atoms ``atom(X) = X - sum(maximal published cells strictly inside X)``, one per
published cell ``X``; every atom is 0 or at least ``k_min`` (see :func:`suppress`).
Differential privacy (rule 5) is :mod:`heatmap.dp`, applied by :mod:`heatmap.publish`.
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
import pyarrow as pa

from heatmap._jit import loaded
from heatmap.aggregate import parent_index, strictly_sorted
from heatmap.devicehash import KeyedHasher
from heatmap.deviceids import DeviceCodes
from heatmap.errors import StoreUnavailable

SECRET_FILE = "secret.key"
_FEW_IDS = 4096
_ID_COLUMNS = ("w", "device", "device_id", "device_code")


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
    """Keyed 64-bit BLAKE2b of device ids (:mod:`heatmap.devicehash`, whole columns at once).

    Lives as long as one ingest; raw ids exist only in memory of the parsing step. Categorical
    ids are hashed once per code and remembered for the ingest's later chunks; so are the codes
    of a file's :class:`~heatmap.deviceids.DeviceCodes` (``codes``).
    """

    def __init__(self, key: bytes, codes: DeviceCodes | None = None) -> None:
        self._key = key
        self._codes = codes
        self._by_file_code = np.zeros(0, dtype=np.int64)
        self._file_hashed = 0
        self._many: KeyedHasher | None = None
        self._cache: dict[str, int] = {}
        # Hashes by polars' (process-global, stable) categorical code: ids seen in an earlier
        # chunk cost one numpy gather, not a dictionary lookup each.
        self._by_code = np.zeros(0, dtype=np.int64)
        self._known = np.zeros(0, dtype=bool)
        self._lock = threading.Lock()

    def hash_one(self, device_id: str) -> int:
        """Return the keyed hash of one id (signed 64-bit), by ``hashlib``: the reference."""
        h = self._cache.get(device_id)
        if h is None:
            digest = hashlib.blake2b(device_id.encode(), key=self._key, digest_size=8).digest()
            h = self._cache[device_id] = int.from_bytes(digest, "little", signed=True)
        return h

    def replace_ids(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Replace the ``device_id`` column (str or Categorical) by ``device`` (keyed hash).

        Thread-safe: parts of one unit may be hashed on several threads.
        """
        if "device_code" in frame.columns:
            codes = frame["device_code"].to_numpy()
            with self._lock:
                by_code = self._file_codes_to_hashes()
            out = frame.with_columns(device=pl.Series("device", by_code[codes]))
            return out.select("w", "device", *[c for c in out.columns if c not in _ID_COLUMNS])
        ids = frame["device_id"]
        if isinstance(ids.dtype, pl.Categorical):
            # Map through the integer codes: only ids not seen before are turned into strings.
            codes = ids.to_physical().to_numpy()
            with self._lock:
                by_code = self._codes_to_hashes(ids, codes)
            out = frame.with_columns(device=pl.Series("device", by_code[codes])).drop("device_id")
        else:
            hashes = self._hash_strings(ids.cast(pl.String))
            out = frame.with_columns(device=pl.Series("device", hashes)).drop("device_id")
        return out.select("w", "device", *[c for c in out.columns if c not in ("w", "device")])

    def _file_codes_to_hashes(self) -> npt.NDArray[np.int64]:
        """Hash the file's codes not hashed yet; return the code -> hash table."""
        assert self._codes is not None
        done, size = self._file_hashed, self._codes.size
        if size > done:
            if size > len(self._by_file_code):
                self._by_file_code = np.resize(self._by_file_code, max(size, 2 * done))
            self._by_file_code[done:size] = self._hash_arrow(self._codes.ids(done, size))
            self._file_hashed = size
        return self._by_file_code

    def _hash_strings(self, ids: pl.Series) -> npt.NDArray[np.int64]:
        """Hash a column of ids (see :meth:`_hash_arrow`)."""
        return self._hash_arrow(ids.to_arrow())

    def _hash_arrow(self, ids: pa.Array) -> npt.NDArray[np.int64]:
        """Hash Arrow text ids: the compiled kernel, or ``hashlib`` for a few ids while the
        kernels are not loaded (a one-row ingest never pays numba's start-up)."""
        if len(ids) < _FEW_IDS and not loaded():
            return np.array([self.hash_one(i) for i in ids.to_pylist()], dtype=np.int64)
        if self._many is None:
            self._many = KeyedHasher(self._key)
        return self._many.hash_strings(ids)

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
            self._by_code[new] = self._hash_strings(ids.gather(rows[first]).cast(pl.String))
            self._known[new] = True
        return self._by_code


def suppress(counts: pl.DataFrame, k_min: int) -> pl.Series:
    """Return which rows of rolled-up counts may be published (rules 2 and 3).

    Parameters
    ----------
    counts
        Columns ``w``, ``res``, ``cell``, ``devices``: exact roll-ups of the finest resolution,
        for any number of windows (as made by ``aggregate.rollup``; any row order).
    k_min
        Minimum number of devices a published number may describe.

    Returns
    -------
    Series
        Boolean ``published``, aligned with ``counts``.

    Notes
    -----
    *Rule 2*: a cell with fewer than ``k_min`` devices is never published. *Rule 3, the atom
    rule*: the roll-up is a tree (one per window), so whatever published cells an attacker adds
    and subtracts, the result is a sum of atoms ``atom(X) = X - sum(maximal published cells
    strictly inside X)`` (maximal: no published cell between them and ``X``). Every atom of a
    published cell must be 0 or ``>= k_min``. Checking one finer resolution at a time is not
    enough: ``P - A - b1`` (``A`` at res 9, ``b1`` at res 10 under a withheld sibling of ``A``)
    is an atom no pairwise check sees.

    Complementary suppression, greedy, fine to coarse. Start from ``devices >= k_min``. At each
    resolution compute the atoms of its published cells from the (final) finer levels. A cell
    ``X`` whose atom is in ``1..k_min-1`` withholds one published descendant ``Y`` with a
    positive atom that is maximal in ``X`` once the atom-0 published cells between them are
    withheld too (those add nothing): the choice withholding the fewest cells, then the one with
    the smallest atom. Withholding ``Y`` moves ``atom(Y)`` into ``atom(X)`` and changes no
    other atom (``Y``'s maximal cells become ``X``'s; atoms below ``Y`` keep their maximal
    cells). So every cell's atom, when its level is reached, is still its atom before any
    withholding, and exactly one ``Y`` (with its chain) is withheld per offending atom.
    One withholding per offending atom suffices: finer atoms are already 0 or ``>= k_min``, so
    ``atom(Y) >= k_min`` lifts ``atom(X)`` to ``>= k_min``; and such a ``Y`` always exists,
    since ``X >= k_min > atom(X)`` means the atoms inside ``X`` sum to something positive.
    Coarser levels are settled after, and their withholdings only touch cells finer than
    them, whose atoms they leave alone. The coarsest resolution is never withheld for the rule
    (it counts everyone), and a cell with ``>= k_min`` devices is absent only if it lies
    strictly inside a cell whose atom, before suppression, was in ``1..k_min-1``.

    Vectorised per level: atoms come from one ``bincount`` over each level's parent rows; the
    search for ``Y`` descends level by level from the offending cells only, through the cells
    with ``>= k_min`` devices that are withheld or have atom 0 (children found by
    ``searchsorted`` in the sorted parent rows).
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
    spans = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(levels))]
    dev = [dev_all[s] for s in spans]
    pub = [pub_all[s] for s in spans]  # views: withholding writes through to pub_all
    # up[i]: row (within level i - 1) of each level-i cell's parent, non-decreasing.
    up = [np.zeros(0, np.intp)] + [
        parent_index(w_all[spans[i]], cell_all[spans[i]], levels[i - 1])
        for i in range(1, len(levels))
    ]
    atom: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)] * len(levels)
    cover = np.zeros(0, np.int64)  # devices in the maximal published cells inside each cell
    for i in range(len(levels) - 1, -1, -1):  # fine to coarse
        if i + 1 < len(levels):
            seen = np.where(pub[i + 1], dev[i + 1], cover)  # what each child shows its parent
            cover = np.rint(np.bincount(up[i + 1], seen, len(dev[i]))).astype(np.int64)
        else:
            cover = np.zeros(len(dev[i]), np.int64)
        atom[i] = dev[i] - cover
        bad = np.flatnonzero(pub[i] & (atom[i] > 0) & (atom[i] < k_min))
        if bad.size:
            _withhold_for(bad, i, dev, pub, atom, up, k_min)
    if order is None:
        return pl.Series("published", pub_all)
    published = np.empty(len(order), dtype=bool)
    published[order] = pub_all
    return pl.Series("published", published)


def _withhold_for(
    bad: npt.NDArray[np.intp],
    i: int,
    dev: list[npt.NDArray[np.int64]],
    pub: list[npt.NDArray[np.bool_]],
    atom: list[npt.NDArray[np.int64]],
    up: list[npt.NDArray[np.intp]],
    k_min: int,
) -> None:
    """Lift the atoms of the level-``i`` cells ``bad`` (in ``1..k_min-1``) to ``>= k_min``.

    For each, withhold a published descendant ``Y`` with a positive atom, reachable through
    withheld or atom-0 published cells only, and the atom-0 cells on the way (see
    :func:`suppress`): the choice withholding the fewest cells, then the one with the smallest
    atom, then the coarsest and lowest. Updates ``pub`` and ``atom[i]`` in place.
    """
    # Candidates per level: (level, row, owner = index into bad, cells withheld if picked).
    found: list[tuple[int, npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]]
    found = []
    rows, owner = bad, np.arange(len(bad))
    cost = np.zeros(len(bad), np.intp)  # published (atom-0) cells on the path below X
    for j in range(i + 1, len(dev)):
        lo = np.searchsorted(up[j], rows)
        n = np.searchsorted(up[j], rows + 1) - lo
        kids = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        owner, cost = np.repeat(owner, n), np.repeat(cost, n)
        # Published cells and the cells between them and X all hold >= k_min devices.
        keep = dev[j][kids] >= k_min
        kids, owner, cost = kids[keep], owner[keep], cost[keep]
        on = pub[j][kids]
        cand = on & (atom[j][kids] > 0)
        if cand.any():
            found.append((j, kids[cand], owner[cand], cost[cand] + 1))
        rows, owner, cost = kids[~cand], owner[~cand], cost[~cand] + on[~cand]
        if not rows.size:
            break
    empty = np.zeros(0, np.intp)
    lev = np.concatenate([np.full(len(r), j) for j, r, _, _ in found] or [empty])
    row = np.concatenate([r for _, r, _, _ in found] or [empty])
    own = np.concatenate([o for _, _, o, _ in found] or [empty])
    cells = np.concatenate([c for _, _, _, c in found] or [empty])
    gain = np.concatenate([atom[j][r] for j, r, _, _ in found] or [empty.astype(np.int64)])
    pick = np.lexsort((row, lev, gain, cells, own))
    first = np.ones(len(pick), dtype=bool)
    first[1:] = own[pick][1:] != own[pick][:-1]
    pick = pick[first]  # one per owner
    atom[i][bad[own[pick]]] += gain[pick]
    for j in np.unique(lev[pick]).tolist():
        r = row[pick][lev[pick] == j]
        pub[j][r] = False
        for m in range(j - 1, i, -1):  # the cells in between: atom 0 or already withheld
            r = up[m + 1][r]
            pub[m][r] = False
    # No candidate (only with counts that are not an exact roll-up): withhold X itself.
    lost = np.ones(len(bad), dtype=bool)
    lost[own[pick]] = False
    pub[i][bad[lost]] = False
