"""The JSON answers of the read side: a point, a bbox, the windows, the legend, city figures.

Every number answered is read from a published (privacy-applied) snapshot; a cell that is not
published is answered as ``people: None, suppressed: True`` whatever its true count (0 or a
few), so the answer never tells one from the other. Each function takes a :class:`Reader` and
parsed values (a :class:`~heatmap.read.ref.Ref`, a bbox), never raw request strings.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any, cast

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3
import shapely

from heatmap.errors import BadInput
from heatmap.model import Snapshot, epoch_to_iso
from heatmap.places import load_outline
from heatmap.policy import PublishPolicy
from heatmap.publish import legend, privacy_summary
from heatmap.read.reader import Reader
from heatmap.read.ref import LATEST, Ref
from heatmap.read.shapes import (
    CellCollection,
    CellFeature,
    Coverage,
    DensityAnswer,
    Label,
    LegendAnswer,
    PrivacyAnswer,
    ResStats,
    StatsAnswer,
    Trend,
    WindowOut,
    WindowsAnswer,
)
from heatmap.store import WindowInfo
from tiles.index import cells_to_boundaries

F64 = npt.NDArray[np.float64]

TREND_STEADY = 0.10
"""Relative change below which a trend is called ``steady``."""


@lru_cache(maxsize=4096)
def _iso(ts: int) -> str:
    return epoch_to_iso(ts)


def window_json(info: WindowInfo) -> WindowOut:
    """Return what an answer describes: a release or a closed window (ISO-8601 UTC).

    ``as_of`` is the time the numbers hold for (a release's tick, a window's end) and
    ``horizon_s`` the span counted, so a client can tell "now" from history.
    """
    start, end = info.window
    return {
        "start": _iso(start),
        "end": _iso(end),
        "complete": info.closed,
        "kind": info.kind,  # type: ignore[typeddict-item]  # release | window | hour | day
        "as_of": _iso(end),
        "horizon_s": end - start,
    }


def _label(snap: Snapshot, band: int) -> Label:
    b = snap.bands[band]
    return {"en": b.label_en, "zh": b.label_zh}


def suppressed_label(policy: PublishPolicy) -> Label:
    """Return the en/zh label of a withheld value."""
    return legend_json(policy)["suppressed"]


def _value(snap: Snapshot, cell: int) -> tuple[float | None, float | None, int | None]:
    row = int(snap.lookup(np.array([cell], dtype=np.uint64))[0])
    if row < 0:
        return None, None, None
    return float(snap.people[row]), float(snap.density_km2[row]), int(snap.band[row])


def trend_json(now: float | None, before: float | None, prev: WindowInfo | None) -> Trend:
    """Return the change from the previous window (all ``None`` when either side is withheld).

    ``direction`` is ``busier`` / ``quieter`` when the relative change exceeds
    :data:`TREND_STEADY`, else ``steady``.

    >>> trend_json(120.0, 100.0, None)["direction"]
    'busier'
    """
    out: Trend = {
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


OUTSIDE_LABEL: Label = {"en": "Outside the covered area", "zh": "不在覆盖范围内"}
"""Label of a point outside the city outline (no data is collected there)."""


@lru_cache(maxsize=1)
def _coverage_area() -> Any:
    """Return the covered area (the city outline), prepared for fast point tests."""
    geom = load_outline()
    shapely.prepare(geom)
    return geom


def covered(lat: float, lng: float) -> bool:
    """Return True when a point lies inside the covered area (the city outline)."""
    return bool(shapely.contains_xy(_coverage_area(), lng, lat))


def _note(coverage: Coverage, drawn: int, res: int, policy: PublishPolicy) -> Label | None:
    k = policy.k_min
    if coverage == "parent":
        return {
            "en": (
                f"Resolution {drawn} is withheld here (fewer than {k} devices, or for privacy); "
                f"showing the published cell of resolution {res} that contains it: its average "
                "over a larger area."
            ),
            "zh": (
                f"此处第 {drawn} 级网格未公开（少于{k}台设备或因隐私保护），"
                f"显示包含它的第 {res} 级公开网格：较大范围的平均值。"
            ),
        }
    if coverage == "withheld":
        return suppressed_label(policy)
    if coverage == "outside":
        return {
            "en": "This point is outside the covered area: no data is collected there.",
            "zh": "该地点不在覆盖范围内，没有数据。",
        }
    return None


def density_at(
    reader: Reader, lat: float, lng: float, res: int | None = None, ref: Ref = LATEST
) -> DensityAnswer:
    """Return what the map shows at a point: the finest published cell containing it, with trend.

    ``res`` is the resolution drawn (the map's at some zoom; default ``base_res``, street
    zoom). Where the point's cell of ``res`` is withheld, its finest published ancestor (the
    parent, grandparent...) fills the gap, as on the tiles (:mod:`tiles.fill`); ``res`` and
    ``cell`` of the answer are then that ancestor's, ``drawn_res`` the one asked, and
    ``coverage``/``note`` say why. Withheld at every level: ``people: None, suppressed: True``
    for the cell of ``min_res``, or, outside the city outline (the covered area), ``coverage:
    "outside"`` with ``suppressed: False``. Numbers are the snapshot's, exactly.
    """
    s = reader.settings
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        raise BadInput("lat must be in [-90, 90] and lng in [-180, 180]")
    drawn = s.base_res if res is None else reader.check_res(res)
    info = reader.window(ref)
    snaps = reader.snapshots(info)
    # The map paints the point's cell of ``drawn`` with its finest published *logical* ancestor
    # (the H3 parent chain, as tiles.fill does), which near a cell edge can differ from the
    # coarser cell the point itself falls in: walk the same chain here.
    here = h3.latlng_to_cell(lat, lng, drawn)
    chosen = s.min_res
    cell = h3.str_to_int(h3.cell_to_parent(here, chosen))
    coverage: Coverage | None = None
    for r in range(drawn, s.min_res - 1, -1):
        c = h3.str_to_int(here if r == drawn else h3.cell_to_parent(here, r))
        if _value(snaps[r], c)[0] is not None:
            chosen, cell = r, c
            coverage = "published" if r == drawn else "parent"
            break
    if coverage is None:
        coverage = "withheld" if covered(lat, lng) else "outside"
    snap = snaps[chosen]
    people, density, band = _value(snap, cell)
    prev = reader.previous(info)
    before = None
    if prev is not None:
        before = _value(reader.snapshots(prev)[chosen], cell)[0]
    if band is not None:
        label = _label(snap, band)
    elif coverage == "withheld":
        label = suppressed_label(reader.policy)
    else:
        label = OUTSIDE_LABEL
    return {
        "cell": h3.int_to_str(cell),
        "res": chosen,
        "window": window_json(info),
        "people": people,
        "density_km2": density,
        "band": None if band is None else snap.bands[band].name,
        "label": label,
        "suppressed": coverage == "withheld",
        "trend": trend_json(people, before, prev),
        "drawn_res": drawn,
        "coverage": coverage,
        "note": _note(coverage, drawn, chosen, reader.policy),
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
    reader: Reader, bbox: tuple[float, float, float, float], res: int, ref: Ref = LATEST
) -> CellCollection:
    """Return the published cells of ``res`` whose centre lies in a bbox, as GeoJSON.

    Bounded: a bbox covering more than ``max_cells`` cells of ``res`` (see
    :func:`bbox_cell_estimate`) is refused with the limit in the message. Withheld cells are not
    listed (a point query answers them with ``suppressed: true``).
    """
    s = reader.settings
    reader.check_res(res)
    est = bbox_cell_estimate(bbox, res)
    if est > s.max_cells:
        hint = ""
        if res > s.min_res:
            hint = f" (res {res - 1}: about {bbox_cell_estimate(bbox, res - 1):,})"
        raise BadInput(
            f"bbox covers about {est:,} cells at res {res}, more than the limit of "
            f"{s.max_cells:,}: use a smaller bbox or a coarser res{hint}"
        )
    info = reader.window(ref)
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
    features: list[CellFeature] = []
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


def windows_json(reader: Reader, limit: int = 100, before: Ref = LATEST) -> WindowsAnswer:
    """Return a page of closed windows, newest first, the range of the history, and the latest
    release (windows still filling are not listed: they change with every batch).

    ``before`` (a time; the latest = no bound) pages back; ``next_before`` is the value of
    ``before`` that fetches the next (older) page.
    """
    if not 1 <= limit <= 1000:
        raise BadInput("limit must be in [1, 1000]")
    every = reader.windows()
    wl = every.closed()
    page = wl.page(limit, before.at)
    first, latest = wl.first(), wl.latest()
    release = every.releases.latest()
    more = bool(page) and first is not None and page[-1].window.start > first.window.start
    return {
        "total": len(wl),
        "window_s": reader.settings.window_s,
        "first": None if first is None else window_json(first),
        "latest": None if latest is None else window_json(latest),
        "latest_release": None if release is None else window_json(release),
        "windows": [window_json(i) for i in page],
        "next_before": page[-1].window.isoformat() if more else None,
    }


def legend_json(policy: PublishPolicy) -> LegendAnswer:
    """Return the legend (bands, colours, zh/en labels, thresholds, privacy parameters)."""
    return cast(LegendAnswer, legend(policy))


def privacy_json(policy: PublishPolicy) -> PrivacyAnswer:
    """Return the privacy parameters in force and, with DP, the budget per device."""
    return cast(PrivacyAnswer, privacy_summary(policy))


def stats_json(reader: Reader, ref: Ref = LATEST) -> StatsAnswer:
    """Return city figures of a window: people seen and published cells by band per resolution.

    ``people`` sums the published cells of the coarsest resolution (coarse cells count everyone
    in them; only coarse cells under ``k_min`` are missing).
    """
    s = reader.settings
    info = reader.window(ref)
    snaps = reader.snapshots(info)
    names = snaps[s.min_res].bands
    by_res: list[ResStats] = []
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
        "published_cells": sum(x["cells"] for x in by_res),
        "by_res": by_res,
        "k_min": s.k_min,
        "dp_epsilon": s.dp_epsilon,
        "expansion": s.expansion,
    }
