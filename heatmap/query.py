"""Read side of the service: which window, which snapshot, and the JSON answers built on them.

No web framework here: ``heatmap.api`` parses a request, calls one function of this module and
wraps the result. Every number answered is read from a published (privacy-applied) snapshot; a
cell that is not published is answered as ``people: None, suppressed: True`` whatever its true
count (0 or a few), so the answer never tells one from the other.

- :class:`WindowCatalog` keeps the store's window list in memory and refreshes it when the store
  changes (cheap change token, incremental reload), so a request costs no scan of 100k windows
  and still sees a committed batch at once.
- :class:`Reader` resolves ``?window=`` and memoises snapshots per window version.
- :class:`PlaceBook` holds the named places, their cells and their history (usual level for an
  hour of the week, forecast, best time to go).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from heatmap.config import Settings
from heatmap.errors import BadInput, NotFound
from heatmap.model import Snapshot, Window, epoch_to_iso
from heatmap.places import Place, find_place, load_places, place_cells
from heatmap.publish import cell_area_km2, density_to_band, legend, make_bands
from heatmap.service import Heatmap, parse_when
from heatmap.store import Store, WindowInfo
from tiles.index import cells_to_boundaries

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

TREND_STEADY = 0.10
"""Relative change below which a trend is called ``steady``."""

HISTORY_WEEKS = 4
"""Weeks of history averaged for the usual level at an hour of the week."""

HISTORY_DAYS = 7
"""Days of history averaged for the usual level at an hour of the day (fallback)."""

FORECAST_TAU_H = 2.0
"""e-folding time (hours) of the current departure from usual in the forecast."""

FORECAST_STEPS_MIN = (30, 60, 90, 120)
"""Forecast horizons in minutes after the current window starts."""

RATIO_CLIP = (0.25, 4.0)
"""Bounds of the current/usual ratio used by the forecast (one odd window cannot explode it)."""


# -- window catalog -------------------------------------------------------------------------------


class WindowList:
    """An immutable, sorted, columnar view of the store's windows with O(log n) lookups.

    Rows are ``(w, start, end, closed, version, devices)`` in an int64 matrix, so 100k windows
    cost a few MB and no Python object each; :class:`WindowInfo` is made on access.

    >>> from heatmap.model import Window
    >>> wl = WindowList.of([WindowInfo(1, Window(300, 600), True, 1, 5)])
    >>> wl.get(1).window.start, wl.get(2)
    (300, None)
    """

    def __init__(self, rows: npt.NDArray[np.int64]) -> None:
        self.rows = rows.reshape(-1, 6)
        self.ws = self.rows[:, 0]
        self.starts = self.rows[:, 1]
        self._latest = self.info(-1) if len(self.rows) else None

    @classmethod
    def of(cls, infos: Sequence[WindowInfo]) -> WindowList:
        """Return the list of some :class:`WindowInfo`."""
        return cls(
            np.array(
                [(i.w, *i.window, int(i.closed), i.version, i.devices) for i in infos],
                dtype=np.int64,
            )
        )

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def info(self, i: int) -> WindowInfo:
        """Return the ``i``-th window (oldest first; negative counts from the newest)."""
        w, a, b, c, v, d = self.rows[i].tolist()
        return WindowInfo(w, Window(a, b), bool(c), v, d)

    def infos(self, lo: int = 0, hi: int | None = None) -> list[WindowInfo]:
        """Return the windows ``lo:hi`` as :class:`WindowInfo`, oldest first."""
        return [self.info(i) for i in range(*slice(lo, hi).indices(len(self)))]

    def first(self) -> WindowInfo | None:
        """Return the oldest window, or None without data."""
        return self.info(0) if len(self) else None

    def latest(self) -> WindowInfo | None:
        """Return the newest window, or None without data."""
        return self._latest

    def latest_closed(self) -> WindowInfo | None:
        """Return the newest closed window, or None."""
        idx = np.flatnonzero(self.rows[:, 3])
        return self.info(int(idx[-1])) if idx.size else None

    def get(self, w: int) -> WindowInfo | None:
        """Return window number ``w`` if the store has it."""
        i = int(np.searchsorted(self.ws, w))
        if i < len(self) and int(self.ws[i]) == w:
            return self.info(i)
        return None

    def between(self, start_ts: int, end_ts: int) -> list[WindowInfo]:
        """Return the windows whose start lies in ``[start_ts, end_ts)``, oldest first."""
        lo = int(np.searchsorted(self.starts, start_ts, side="left"))
        hi = int(np.searchsorted(self.starts, end_ts, side="left"))
        return self.infos(lo, hi)

    def page(self, limit: int, before_ts: int | None = None) -> list[WindowInfo]:
        """Return up to ``limit`` windows starting before ``before_ts``, newest first."""
        hi = len(self) if before_ts is None else int(np.searchsorted(self.starts, before_ts))
        return self.infos(max(0, hi - limit), hi)[::-1]

    def splice(self, lo_w: int, tail: WindowList) -> WindowList:
        """Return this list with every window ``w >= lo_w`` replaced by ``tail``."""
        cut = int(np.searchsorted(self.ws, lo_w))
        return WindowList(np.concatenate([self.rows[:cut], tail.rows]))


class WindowCatalog:
    """The store's windows kept in memory, refreshed incrementally when the store changes.

    Parameters
    ----------
    store : Store
        The store the service writes to.
    window_s : int
        Window length (``HEATMAP_WINDOW_S``).
    check_every_s : float
        How often the change token is read at most (writes by *this* process call
        :meth:`invalidate` and are seen at once; other processes within this delay).
    ttl_s : float
        Without a change token (non-SQLite stores), the list is reloaded this often.

    Notes
    -----
    Only windows that are not older than the watermark can change (late rows are rejected, and
    every window before the watermark is closed), so a refresh reads ``w >= watermark // window_s
    - 1`` and keeps the older prefix: a commit costs a primary-key range read, not a scan.
    """

    def __init__(
        self, store: Store, window_s: int, check_every_s: float = 0.05, ttl_s: float = 1.0
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.check_every_s = check_every_s
        self.ttl_s = ttl_s
        self._incremental = store.change_token() is not None
        self._list = WindowList(np.zeros((0, 6), dtype=np.int64))
        self._token: int | None = None
        self._watermark: int | None = None
        self._next_check = 0.0
        self._loaded = False
        self._lock = threading.Lock()
        self._gen = 0
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def invalidate(self) -> None:
        """Make the next access check the store (call after committing a batch)."""
        self._gen += 1
        self._next_check = 0.0

    def current(self) -> WindowList:
        """Return the up-to-date window list."""
        if time.monotonic() >= self._next_check:
            self.refresh()
        return self._list

    def peek(self) -> WindowList | None:
        """Return the window list if no check is due (never touches the store), else None."""
        return self._list if time.monotonic() < self._next_check else None

    def cached(self) -> WindowList:
        """Return the window list as last loaded (never touches the store)."""
        return self._list

    def refresh(self, force: bool = False) -> WindowList:
        """Check the change token and reload what changed (everything with ``force``)."""
        with self._lock:
            gen = self._gen
            if not self._incremental:
                self._list = WindowList(self.store.window_rows_since(None)[0])
                self._loaded = True
                valid = self.ttl_s
            else:
                token = self.store.change_token()
                if force or not self._loaded or token != self._token:
                    self._reload()
                    self._token = token
                valid = self.check_every_s
            if self._gen == gen:  # no commit was announced meanwhile
                # With a background refresher the list stays valid for two of its periods, so
                # requests do not fall due between two of its runs.
                scale = 2.0 if self._refresher is not None else 1.0
                self._next_check = time.monotonic() + valid * scale
            return self._list

    def start_refresher(self) -> None:
        """Refresh in a daemon thread, so requests never wait on the change check."""
        if self._refresher is not None:
            return
        self._stop.clear()
        period = self.check_every_s if self._incremental else self.ttl_s

        def run() -> None:
            while not self._stop.wait(period):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - requests refresh themselves and report
                    self._next_check = 0.0

        self._refresher = threading.Thread(target=run, name="window-catalog", daemon=True)
        self._refresher.start()

    def stop_refresher(self) -> None:
        """Stop the background refresher (if running)."""
        if self._refresher is not None:
            self._stop.set()
            self._refresher.join(5)
            self._refresher = None

    def _reload(self) -> None:
        old = self._list
        if not self._loaded or self._watermark is None or not len(old):
            rows, wm = self.store.window_rows_since(None)
            self._list = WindowList(rows)
        else:
            lo = self._watermark // self.window_s - 1
            rows, wm = self.store.window_rows_since(lo)
            self._list = old.splice(lo, WindowList(rows))
        self._watermark = wm
        self._loaded = True

    def close(self) -> None:
        """Stop refreshing."""
        self.stop_refresher()


# -- reader ---------------------------------------------------------------------------------------


class Reader:
    """Resolve windows and hand out their snapshots, memoised per window version.

    ``on_build`` receives the seconds spent whenever a snapshot set had to be built or loaded.
    """

    MEMO = 16

    def __init__(self, hm: Heatmap, on_build: Callable[[float], None] | None = None) -> None:
        self.hm = hm
        self.settings = hm.settings
        self.catalog = WindowCatalog(hm.store, hm.settings.window_s)
        self.on_build = on_build
        self._memo: OrderedDict[tuple[int, int], dict[int, Snapshot]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._build_lock = threading.Lock()

    def close(self) -> None:
        """Release the catalog's connection."""
        self.catalog.close()

    def invalidate(self) -> None:
        """Forget what is known about the store's windows (after a commit)."""
        self.catalog.invalidate()

    def windows(self) -> WindowList:
        """Return the current window list."""
        return self.catalog.current()

    def window(self, when: str | None = None) -> WindowInfo:
        """Return the window containing ``when`` (ISO-8601, epoch s, ``latest`` or None)."""
        return self._resolve(self.catalog.current(), when)

    def _resolve(self, wl: WindowList, when: str | None) -> WindowInfo:
        if when is None or when.strip() in ("", "latest"):
            info = wl.latest()
            if info is None:
                raise NotFound("no data yet: ingest pings first")
            return info
        w = when_to_ts(when) // self.settings.window_s
        found = wl.get(w)
        if found is None:
            have = ""
            if len(wl):
                have = f" (windows run from {wl.info(0).window.isoformat()} to "
                have += f"{wl.info(-1).window.isoformat()})"
            raise NotFound(f"no window at {when}{have}")
        return found

    def previous(self, info: WindowInfo) -> WindowInfo | None:
        """Return the window just before ``info``, if the store has it."""
        return self.catalog.current().get(info.w - 1)

    def peek(self, info: WindowInfo) -> dict[int, Snapshot] | None:
        """Return the memoised snapshots of a window version, or None (never blocks)."""
        return self._memo.get((info.w, info.version))

    def snapshots(self, info: WindowInfo) -> dict[int, Snapshot]:
        """Return the window's snapshots per resolution, building them once per version."""
        key = (info.w, info.version)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        with self._build_lock:  # single flight: concurrent misses build once
            hit = self._memo.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            snaps = self.hm.snapshots(info)
            if self.on_build is not None:
                self.on_build(time.perf_counter() - t0)
            with self._memo_lock:
                self._memo[key] = snaps
                while len(self._memo) > self.MEMO:
                    self._memo.popitem(last=False)
        return snaps

    def warm(self, when: str | None) -> bool:
        """Return True when answering for ``when`` needs no store access and no build."""
        wl = self.catalog.peek()
        if wl is None:
            return False
        try:
            info = self._resolve(wl, when)
        except (BadInput, NotFound):
            return True  # the answer is an error, known without blocking
        prev = wl.get(info.w - 1)
        return self.peek(info) is not None and (prev is None or self.peek(prev) is not None)


def when_to_ts(when: str) -> int:
    """Return epoch seconds of a ``?window=`` value; ``BadInput`` when it is not a time.

    >>> when_to_ts("2026-11-28T09:00:00Z")
    1795856400
    """
    try:
        ts = parse_when(when)
    except (OverflowError, ValueError) as exc:
        raise BadInput(f"window {when!r} is not ISO-8601 (e.g. 2026-11-28T09:00:00Z)") from exc
    if not -(2**53) < ts < 2**53:
        raise BadInput(f"window {when!r} is out of range")
    return ts


# -- JSON pieces ----------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _iso(ts: int) -> str:
    return epoch_to_iso(ts)


def window_json(info: WindowInfo) -> dict[str, Any]:
    """Return ``{start, end, complete}`` of a window (ISO-8601 UTC)."""
    return {"start": _iso(info.window.start), "end": _iso(info.window.end), "complete": info.closed}


def _label(snap: Snapshot, band: int) -> dict[str, str]:
    b = snap.bands[band]
    return {"en": b.label_en, "zh": b.label_zh}


def _suppressed_label(settings: Settings) -> dict[str, str]:
    return dict(legend(settings)["suppressed"])  # type: ignore[call-overload]


def _value(snap: Snapshot, cell: int) -> tuple[float | None, float | None, int | None]:
    row = int(snap.lookup(np.array([cell], dtype=np.uint64))[0])
    if row < 0:
        return None, None, None
    return float(snap.people[row]), float(snap.density_km2[row]), int(snap.band[row])


def trend_json(now: float | None, before: float | None, prev: WindowInfo | None) -> dict[str, Any]:
    """Return the change from the previous window (all ``None`` when either side is withheld).

    ``direction`` is ``busier`` / ``quieter`` when the relative change exceeds
    :data:`TREND_STEADY`, else ``steady``.

    >>> trend_json(120.0, 100.0, None)["direction"]
    'busier'
    """
    out: dict[str, Any] = {
        "previous_window": None if prev is None else window_json(prev),
        "previous_people": before,
        "change": None,
        "ratio": None,
        "direction": None,
    }
    if now is None or before is None:
        return out
    out["change"] = now - before
    if before > 0:
        ratio = now / before
        out["ratio"] = round(ratio, 4)
        out["direction"] = (
            "busier"
            if ratio > 1 + TREND_STEADY
            else "quieter"
            if ratio < 1 - TREND_STEADY
            else "steady"
        )
    else:
        out["direction"] = "busier" if now > 0 else "steady"
    return out


# -- density at a point ---------------------------------------------------------------------------


def density_at(
    reader: Reader, lat: float, lng: float, res: int | None = None, when: str | None = None
) -> dict[str, Any]:
    """Return the published density of the cell containing a point, with the trend.

    Without ``res`` the finest published resolution at that point is used (``min_res`` when the
    point is withheld at every resolution). Numbers are the snapshot's, exactly.
    """
    s = reader.settings
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        raise BadInput("lat must be in [-90, 90] and lng in [-180, 180]")
    if res is not None and not s.min_res <= res <= s.base_res:
        raise BadInput(f"res {res} out of range [{s.min_res}, {s.base_res}]")
    info = reader.window(when)
    snaps = reader.snapshots(info)
    candidates = [res] if res is not None else list(range(s.base_res, s.min_res - 1, -1))
    chosen = candidates[-1]
    for r in candidates:
        if _value(snaps[r], h3.str_to_int(h3.latlng_to_cell(lat, lng, r)))[0] is not None:
            chosen = r
            break
    snap = snaps[chosen]
    cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, chosen))
    people, density, band = _value(snap, cell)
    prev = reader.previous(info)
    before = None
    if prev is not None:
        before = _value(reader.snapshots(prev)[chosen], cell)[0]
    return {
        "cell": h3.int_to_str(cell),
        "res": chosen,
        "window": window_json(info),
        "people": people,
        "density_km2": density,
        "band": None if band is None else snap.bands[band].name,
        "label": _suppressed_label(s) if band is None else _label(snap, band),
        "suppressed": people is None,
        "trend": trend_json(people, before, prev),
    }


# -- cells in a bbox ------------------------------------------------------------------------------


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """Return ``(west, south, east, north)`` from ``"w,s,e,n"`` degrees; ``BadInput`` otherwise.

    >>> parse_bbox("121.4,31.2,121.5,31.3")
    (121.4, 31.2, 121.5, 31.3)
    """
    parts = text.split(",")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise BadInput("bbox must be 'west,south,east,north' in degrees (4 numbers)") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise BadInput("bbox values must be finite numbers")
    if not (
        -180.0 <= w <= 180.0 and -180.0 <= e <= 180.0 and -90.0 <= s <= 90.0 and -90 <= n <= 90
    ):
        raise BadInput("bbox out of range: lng in [-180, 180], lat in [-90, 90]")
    if not (w < e and s < n):
        raise BadInput("bbox is inverted or empty: need west < east and south < north")
    return w, s, e, n


def bbox_cell_estimate(bbox: tuple[float, float, float, float], res: int) -> int:
    """Return about how many H3 cells of ``res`` a bbox covers.

    Notes
    -----
    The area of a lat/lng box on the sphere is ``R^2 (lng2 - lng1) (sin lat2 - sin lat1)``
    (radians, R the authalic radius 6371.007 km), divided by the true area of the ``res`` cell
    at the box's centre (H3 cell areas vary by up to ~2x over the globe, so the global mean
    would be off by 20-30 % at Shanghai). The bound does not depend on the data, so whether a
    request is accepted never changes as the store fills.
    """
    w, s, e, n = bbox
    r = 6371.007180918475
    area = r * r * math.radians(e - w) * (math.sin(math.radians(n)) - math.sin(math.radians(s)))
    centre = h3.latlng_to_cell((s + n) / 2.0, (w + e) / 2.0, res)
    return math.ceil(area / h3.cell_area(centre, "km^2"))


class _Centres:
    """Cell centres per snapshot version and resolution (small LRU)."""

    def __init__(self, size: int = 24) -> None:
        self._items: OrderedDict[tuple[str, int], tuple[F64, F64]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, snap: Snapshot) -> tuple[F64, F64]:
        key = (snap.version, snap.res)
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            return hit
        if len(snap):
            ll = pl.select(plh3.cell_to_latlng(pl.Series("c", snap.cells, dtype=pl.UInt64)))
            arr = np.asarray(ll.to_series().to_list(), dtype=np.float64).reshape(-1, 2)
            hit = (arr[:, 0].copy(), arr[:, 1].copy())
        else:
            hit = (np.zeros(0), np.zeros(0))
        with self._lock:
            self._items[key] = hit
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return hit


_CENTRES = _Centres()


def cells_geojson(
    reader: Reader, bbox_text: str, res: int, when: str | None = None
) -> dict[str, Any]:
    """Return the published cells of ``res`` whose centre lies in a bbox, as GeoJSON.

    Bounded: a bbox covering more than ``max_cells`` cells of ``res`` (see
    :func:`bbox_cell_estimate`) is refused with the limit in the message. Withheld cells are not
    listed (a point query answers them with ``suppressed: true``).
    """
    s = reader.settings
    bbox = parse_bbox(bbox_text)
    if not s.min_res <= res <= s.base_res:
        raise BadInput(f"res {res} out of range [{s.min_res}, {s.base_res}]")
    est = bbox_cell_estimate(bbox, res)
    if est > s.max_cells:
        hint = ""
        if res > s.min_res:
            hint = f" (res {res - 1}: about {bbox_cell_estimate(bbox, res - 1):,})"
        raise BadInput(
            f"bbox covers about {est:,} cells at res {res}, more than the limit of "
            f"{s.max_cells:,}: use a smaller bbox or a coarser res{hint}"
        )
    info = reader.window(when)
    snap = reader.snapshots(info)[res]
    lat, lng = _CENTRES.get(snap)
    w, so, e, n = bbox
    rows = np.flatnonzero((lng >= w) & (lng <= e) & (lat >= so) & (lat <= n))
    if len(rows) > s.max_cells:
        raise BadInput(
            f"bbox holds {len(rows):,} published cells at res {res}, more than the limit of "
            f"{s.max_cells:,}: use a smaller bbox or a coarser res"
        )
    cells = snap.cells[rows]
    verts, nverts = cells_to_boundaries(cells)
    names = snap.band_names
    features = []
    for i, row in enumerate(rows.tolist()):
        ring = verts[i, : int(nverts[i])].tolist()
        ring.append(ring[0])
        cell = h3.int_to_str(int(cells[i]))
        features.append(
            {
                "type": "Feature",
                "id": cell,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "cell": cell,
                    "people": float(snap.people[row]),
                    "density_km2": float(snap.density_km2[row]),
                    "band": names[int(snap.band[row])],
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "bbox": list(bbox),
        "res": res,
        "window": window_json(info),
        "count": len(features),
        "features": features,
    }


# -- windows, legend, stats -----------------------------------------------------------------------


def windows_json(reader: Reader, limit: int = 100, before: str | None = None) -> dict[str, Any]:
    """Return a page of windows, newest first, with the range of the whole history.

    ``next_before`` is the value of ``before`` that fetches the next (older) page.
    """
    if not 1 <= limit <= 1000:
        raise BadInput("limit must be in [1, 1000]")
    wl = reader.windows()
    before_ts = None if before is None else when_to_ts(before)
    page = wl.page(limit, before_ts)
    first, latest = wl.first(), wl.latest()
    more = bool(page) and first is not None and page[-1].w > first.w
    return {
        "total": len(wl),
        "window_s": reader.settings.window_s,
        "first": None if first is None else window_json(first),
        "latest": None if latest is None else window_json(latest),
        "windows": [window_json(i) for i in page],
        "next_before": page[-1].window.isoformat() if more else None,
    }


def legend_json(settings: Settings) -> dict[str, Any]:
    """Return the legend (bands, colours, zh/en labels, thresholds, privacy parameters)."""
    return legend(settings)


def stats_json(reader: Reader, when: str | None = None) -> dict[str, Any]:
    """Return city figures of a window: people seen and published cells by band per resolution.

    ``people`` sums the published cells of the coarsest resolution (coarse cells count everyone
    in them; only coarse cells under ``k_min`` are missing).
    """
    s = reader.settings
    info = reader.window(when)
    snaps = reader.snapshots(info)
    names = make_bands(s.bands_km2)
    by_res = []
    for r in s.resolutions:
        snap = snaps[r]
        counts = np.bincount(snap.band, minlength=len(names)) if len(snap) else [0] * len(names)
        by_res.append(
            {
                "res": r,
                "cells": len(snap),
                "people": float(snap.people.sum()),
                "cells_by_band": {b.name: int(c) for b, c in zip(names, counts, strict=True)},
            }
        )
    return {
        "window": window_json(info),
        "people": by_res[0]["people"],
        "published_cells": sum(int(x["cells"]) for x in by_res),  # type: ignore[call-overload]
        "by_res": by_res,
        "k_min": s.k_min,
        "dp_epsilon": s.dp_epsilon,
        "expansion": s.expansion,
    }


# -- places ---------------------------------------------------------------------------------------


def place_res(place: Place, min_res: int, base_res: int, max_cells: int = 7) -> int:
    """Return the finest resolution at which a place is covered by at most ``max_cells`` cells.

    A place then reads a handful of cells: fine enough to follow its outline, coarse enough
    that few of them are withheld. Clamped to ``[min_res, base_res]``.
    """
    for r in range(base_res, min_res - 1, -1):
        if len(place_cells(place, r)) <= max_cells:
            return r
    return min_res


@dataclass(frozen=True)
class PlaceCells:
    """The cells a place reads and their true area."""

    place: Place
    res: int
    cells: U64
    area_km2: float


class PlaceBook:
    """Named places, their current values and their history.

    Parameters
    ----------
    places : sequence of Place
        The places (default ``sample_data/places.json``).
    settings : Settings
        Published resolutions, bands and display time zone.

    Notes
    -----
    A place's value in a window is the sum of its *published* cells at its resolution
    (:func:`place_res`): ``None`` when all of them are withheld. Values of closed windows never
    change and are memoised; the history is read from the stored published values (no snapshot
    build). See :meth:`usual` and :meth:`forecast` for the methods.
    """

    HISTORY_MEMO = 100_000

    def __init__(self, places: Sequence[Place], settings: Settings) -> None:
        self.settings = settings
        self.places = tuple(places)
        self.index = {p.id: i for i, p in enumerate(self.places)}
        self.cells: list[PlaceCells] = []
        for p in self.places:
            r = place_res(p, settings.min_res, settings.base_res)
            c = place_cells(p, r)
            self.cells.append(PlaceCells(p, r, c, float(cell_area_km2(c).sum())))
        self.area = np.array([pc.area_km2 for pc in self.cells])
        # Per resolution: all place cells concatenated, and which place each belongs to.
        self._by_res: dict[int, tuple[U64, npt.NDArray[np.intp]]] = {}
        for r in sorted({pc.res for pc in self.cells}):
            own = [i for i, pc in enumerate(self.cells) if pc.res == r]
            cells = np.concatenate([self.cells[i].cells for i in own])
            owner = np.concatenate([np.full(len(self.cells[i].cells), i) for i in own])
            self._by_res[r] = (cells.astype(np.uint64), owner.astype(np.intp))
        self.bands = make_bands(settings.bands_km2)
        try:
            self.tz = ZoneInfo(settings.tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.tz = ZoneInfo("UTC")
        self._history: dict[int, F64] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> PlaceBook:
        """Return the book of the places file (default ``sample_data/places.json``)."""
        return cls(load_places(path), settings)

    def find(self, query: str) -> int:
        """Return the index of a place by id (or, failing that, by name); ``NotFound``."""
        i = self.index.get(query)
        if i is not None:
            return i
        p = find_place(self.places, query)
        if p is None:
            raise NotFound(f"no place {query!r}: see /api/v1/places")
        return self.index[p.id]

    # -- values --------------------------------------------------------------------------------
    def values(self, lookup: Callable[[int, U64], F64]) -> F64:
        """Return each place's people; ``lookup(res, cells)`` gives people per cell or NaN."""
        out = np.zeros(len(self.places))
        seen = np.zeros(len(self.places), dtype=bool)
        for r, (cells, owner) in self._by_res.items():
            v = lookup(r, cells)
            ok = ~np.isnan(v)
            np.add.at(out, owner[ok], v[ok])
            seen[owner[ok]] = True
        out[~seen] = np.nan
        return out

    def from_snapshots(self, snaps: dict[int, Snapshot]) -> F64:
        """Return each place's people in a window from its snapshots."""

        def lookup(r: int, cells: U64) -> F64:
            snap = snaps[r]
            rows = snap.lookup(cells)
            return np.where(rows >= 0, snap.people[np.maximum(rows, 0)] if len(snap) else 0, np.nan)

        return self.values(lookup)

    def from_published(self, frame: pl.DataFrame) -> F64:
        """Return each place's people from stored published values (res, cell, people)."""
        res = frame["res"].to_numpy()
        cells_all = frame["cell"].to_numpy()
        people_all = frame["people"].to_numpy()

        def lookup(r: int, cells: U64) -> F64:
            m = res == r
            c, p = cells_all[m], people_all[m]
            order = np.argsort(c)
            c, p = c[order], p[order]
            pos = np.minimum(np.searchsorted(c, cells), max(len(c) - 1, 0))
            found = (c[pos] == cells) if len(c) else np.zeros(len(cells), dtype=bool)
            return np.where(found, p[pos] if len(c) else 0, np.nan)

        return self.values(lookup)

    def closed_values(self, reader: Reader, info: WindowInfo) -> F64:
        """Return the places' people in a closed window (memoised: closed windows are final)."""
        hit = self._history.get(info.w)
        if hit is not None:
            return hit
        pub = reader.hm.store.read_published(info.w)
        vals = np.full(len(self.places), np.nan) if pub is None else self.from_published(pub.frame)
        with self._lock:
            if len(self._history) >= self.HISTORY_MEMO:
                self._history.pop(next(iter(self._history)))
            self._history[info.w] = vals
        return vals

    def window_values(self, reader: Reader, info: WindowInfo) -> F64:
        """Return the places' people in any window (open ones from the live snapshot)."""
        if info.closed:
            return self.closed_values(reader, info)
        return self.from_snapshots(reader.snapshots(info))

    # -- history -------------------------------------------------------------------------------
    def hour_level(self, reader: Reader, wl: WindowList, hour_start: int) -> F64 | None:
        """Return the places' people in the closed window nearest the middle of an hour."""
        wins = [i for i in wl.between(hour_start, hour_start + 3600) if i.closed]
        if not wins:
            return None
        mid = hour_start + 1800
        best = min(wins, key=lambda i: abs((i.window.start + i.window.end) / 2 - mid))
        return self.closed_values(reader, best)

    def usual(self, reader: Reader, wl: WindowList, t: int) -> tuple[F64, str]:
        """Return each place's usual people in the local hour containing ``t``, and the basis.

        Notes
        -----
        The usual level is the mean, over the previous :data:`HISTORY_WEEKS` weeks, of the level
        at the same local hour of the same weekday (``hour_of_week``); a place or week without a
        published value is left out. Without any such week the same hour of the previous
        :data:`HISTORY_DAYS` days is used (``hour_of_day``); without that, NaN (``none``). The
        level of an hour is its closed window nearest the half hour (:meth:`hour_level`).
        """
        local = datetime.fromtimestamp(t, self.tz).replace(minute=0, second=0, microsecond=0)
        for basis, step, count in (
            ("hour_of_week", timedelta(weeks=1), HISTORY_WEEKS),
            ("hour_of_day", timedelta(days=1), HISTORY_DAYS),
        ):
            levels = []
            for k in range(1, count + 1):
                lv = self.hour_level(reader, wl, int((local - k * step).timestamp()))
                if lv is not None:
                    levels.append(lv)
            if levels:
                stack = np.vstack(levels)
                with np.errstate(invalid="ignore"):
                    have = (~np.isnan(stack)).sum(axis=0)
                    mean = np.where(
                        have > 0, np.nansum(stack, axis=0) / np.maximum(have, 1), np.nan
                    )
                return mean, basis
        return np.full(len(self.places), np.nan), "none"

    def band_of(self, i: int, people: float | None) -> dict[str, Any]:
        """Return ``density_km2``, ``band`` and ``label`` of a place value."""
        if people is None:
            return {
                "density_km2": None,
                "band": None,
                "label": _suppressed_label(self.settings),
            }
        d = people / self.area[i] if self.area[i] > 0 else 0.0
        b = self.bands[int(density_to_band(np.array([d]), self.bands)[0])]
        return {"density_km2": d, "band": b.name, "label": {"en": b.label_en, "zh": b.label_zh}}


def forecast_value(
    usual_t: float | None, usual_now: float | None, now: float | None, hours: float
) -> tuple[float | None, str]:
    """Return the expected people ``hours`` ahead and the method used.

    Notes
    -----
    With the usual level at the target hour ``U(t)``, the usual level now ``U(t0)`` and the
    current value ``N``::

        r = clip(N / U(t0), 0.25, 4)            # how far from usual it is now
        F(t) = U(t) * r ** exp(-h / tau)        # the departure decays, tau = 2 h

    so a place twice as busy as usual now is expected ~1.6x usual in one hour and ~1.4x in two,
    following the usual profile's shape. Without ``U(t0)`` or ``N`` the usual level is the
    forecast (``usual``); without any usual level, the current value persists
    (``persistence``); with neither, ``None``.

    >>> forecast_value(100.0, 50.0, 100.0, 0.0)
    (200.0, 'profile_scaled')
    >>> forecast_value(None, None, 80.0, 1.0)
    (80.0, 'persistence')
    """
    if usual_t is not None:
        if usual_now is not None and now is not None and usual_now > 0:
            r = min(max(now / usual_now, RATIO_CLIP[0]), RATIO_CLIP[1])
            return usual_t * r ** math.exp(-hours / FORECAST_TAU_H), "profile_scaled"
        return usual_t, "usual"
    if now is not None:
        return now, "persistence"
    return None, "none"


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _place_head(book: PlaceBook, i: int) -> dict[str, Any]:
    p = book.places[i]
    pc = book.cells[i]
    return {
        "id": p.id,
        "name": {"zh": p.name_zh, "en": p.name_en},
        "kind": p.kind,
        "lat": p.lat,
        "lng": p.lng,
        "res": pc.res,
        "cells": len(pc.cells),
        "area_km2": round(pc.area_km2, 6),
    }


def places_ranking(reader: Reader, book: PlaceBook, when: str | None = None) -> dict[str, Any]:
    """Return the places ranked by crowding (density of their published cells), busiest first.

    Places whose cells are all withheld come last with ``people: None, suppressed: true``.
    """
    info = reader.window(when)
    now = book.window_values(reader, info)
    prev_info = reader.previous(info)
    before = None if prev_info is None else book.window_values(reader, prev_info)
    items = []
    for i in range(len(book.places)):
        people = _num(now[i])
        prev = None if before is None else _num(before[i])
        items.append(
            {
                **_place_head(book, i),
                "people": people,
                **book.band_of(i, people),
                "suppressed": people is None,
                "trend": trend_json(people, prev, prev_info),
            }
        )
    items.sort(key=lambda x: (x["density_km2"] is None, -(x["density_km2"] or 0.0)))
    for rank, item in enumerate(items, 1):
        item["rank"] = rank
    return {"window": window_json(info), "places": items}


def place_detail(
    reader: Reader, book: PlaceBook, place_id: str, when: str | None = None
) -> dict[str, Any]:
    """Return one place: now, trend, usual for this hour, forecast, best time to go today.

    The forecast method is :func:`forecast_value`; the usual level is :meth:`PlaceBook.usual`.
    "Best time today" is the remaining local hour of the window's day with the lowest expected
    level (forecast within two hours, usual level beyond).
    """
    i = book.find(place_id)
    info = reader.window(when)
    wl = reader.windows()
    t0 = info.window.start
    now = _num(book.window_values(reader, info)[i])
    prev_info = reader.previous(info)
    before = None if prev_info is None else _num(book.window_values(reader, prev_info)[i])
    usual_all, basis = book.usual(reader, wl, t0)
    usual_now = _num(usual_all[i])
    ratio = None if now is None or not usual_now else round(now / usual_now, 4)

    forecast = []
    for minutes in FORECAST_STEPS_MIN:
        t = t0 + minutes * 60
        u_t = _num(book.usual(reader, wl, t)[0][i])
        value, method = forecast_value(u_t, usual_now, now, minutes / 60.0)
        forecast.append(
            {
                "at": epoch_to_iso(t),
                "minutes": minutes,
                "people": None if value is None else round(value, 1),
                **book.band_of(i, value),
                "method": method,
            }
        )

    local0 = datetime.fromtimestamp(t0, book.tz)
    day0 = local0.replace(hour=0, minute=0, second=0, microsecond=0)
    today = []
    best: dict[str, Any] | None = None
    for h in range(24):
        start = day0 + timedelta(hours=h)
        ts = int(start.timestamp())
        usual_h = _num(book.usual(reader, wl, ts)[0][i])
        entry = {"hour": h, "start": start.isoformat(), "usual": usual_h}
        today.append(entry)
        if ts + 3600 <= t0:
            continue  # this hour is over
        mid = max(ts + 1800, t0)
        ahead_h = (mid - t0) / 3600.0
        if ahead_h <= 2.0:
            expected, _ = forecast_value(usual_h, usual_now, now, ahead_h)
        else:
            expected = usual_h
        if expected is not None and (best is None or expected < best["people"]):
            best = {
                "hour": h,
                "start": start.isoformat(),
                "end": (start + timedelta(hours=1)).isoformat(),
                "people": round(expected, 1),
                **book.band_of(i, expected),
            }

    return {
        **_place_head(book, i),
        "window": window_json(info),
        "now": {
            "people": now,
            **book.band_of(i, now),
            "suppressed": now is None,
        },
        "trend": trend_json(now, before, prev_info),
        "usual": {
            "people": usual_now,
            **book.band_of(i, usual_now),
            "basis": basis,
            "ratio": ratio,
            "busier_than_usual": None if ratio is None else ratio > 1 + TREND_STEADY,
        },
        "forecast": forecast,
        "today": today,
        "best_time_today": best,
        "timezone": str(book.tz),
    }
