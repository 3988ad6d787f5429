"""Publish: raw counts of one window -> privacy-applied snapshots with density and bands.

A snapshot is immutable. For a closed window it is computed once, stored (so DP noise is drawn
once), and only read afterwards; for the open window it is rebuilt when its version changes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from heatmap.aggregate import rollup
from heatmap.dp import budget, noisy_publish
from heatmap.model import Band, Published, Snapshot, Window
from heatmap.policy import PublishPolicy
from heatmap.privacy import suppress

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

# Colours chosen to differ in lightness as well as hue, so the four stay apart for deuteranopes
# and protanopes (checked with a CVD simulation, see README "Accessibility").
_PALETTE = (
    ("blue", "#3b6fd4", "Quiet", "稀疏"),
    ("green", "#5cd699", "Moderate", "适中"),
    ("yellow", "#fde725", "Busy", "较拥挤"),
    ("red", "#d7191c", "Crowded", "拥挤"),
)


def make_bands(thresholds_km2: Sequence[float], alpha: int = 190) -> tuple[Band, ...]:
    """Return the four bands for the lower bounds of green, yellow and red (people per km2)."""
    lowers = [0.0, *thresholds_km2]
    return tuple(
        Band(name, color, alpha, lower, en, zh)
        for (name, color, en, zh), lower in zip(_PALETTE, lowers, strict=True)
    )


def density_to_band(density_km2: F64, bands: tuple[Band, ...]) -> npt.NDArray[np.uint8]:
    """Return the band index of each density (``lower_km2`` inclusive)."""
    edges = np.array([b.lower_km2 for b in bands[1:]])
    return np.searchsorted(edges, density_km2, side="right").astype(np.uint8)


def cell_area_km2(cells: U64) -> F64:
    """Return the true area of each H3 cell in km2 (h3's exact cell area, remembered).

    The exact area walks each cell's boundary (~2 us a cell): a city's release has some 10^5
    cells, nearly all of them the same from one release to the next, so areas are kept in a
    sorted table (:class:`_Areas`) and only new cells are computed.
    """
    if len(cells) == 0:
        return np.zeros(0)
    return _AREAS.lookup(np.asarray(cells, dtype=np.uint64))


def _exact_area_km2(cells: U64) -> F64:
    s = pl.Series("c", cells, dtype=pl.UInt64)
    return pl.select(plh3.cell_area(s, unit="km^2")).to_series().to_numpy()


class _Areas:
    """Cell areas already computed: sorted cells and their areas, at most ``limit`` of them
    (past it the table starts over: memory stays bounded whatever cells come)."""

    def __init__(self, limit: int = 4_000_000) -> None:
        self.limit = limit
        self._cells = np.zeros(0, dtype=np.uint64)
        self._areas = np.zeros(0, dtype=np.float64)
        self._lock = threading.Lock()

    def lookup(self, cells: U64) -> F64:
        known, areas = self._cells, self._areas  # one consistent pair (replaced whole)
        at = np.searchsorted(known, cells)
        hit = at < len(known)
        hit[hit] = known[at[hit]] == cells[hit]
        if hit.all():
            return areas[at]
        out = np.empty(len(cells), dtype=np.float64)
        out[hit] = areas[at[hit]]
        new = np.unique(cells[~hit])
        new_areas = _exact_area_km2(new)
        out[~hit] = new_areas[np.searchsorted(new, cells[~hit])]
        with self._lock:
            if len(self._cells) + len(new) > self.limit:
                merged, marea = new, new_areas
            else:
                merged = np.concatenate([self._cells, new])
                marea = np.concatenate([self._areas, new_areas])
                order = np.argsort(merged, kind="stable")
                merged, marea = merged[order], marea[order]
                keep = np.ones(len(merged), dtype=bool)
                keep[1:] = merged[1:] != merged[:-1]  # another thread added some meanwhile
                merged, marea = merged[keep], marea[keep]
            self._cells, self._areas = merged, marea
        return out


_AREAS = _Areas()


TEMPORAL_LIMIT = (
    "Without differential privacy, k-anonymity protects each release on its own but not the "
    "difference between two of them: someone who plants phones next to a person can see the "
    "count change by that one person from one release to the next. Set HEATMAP_DP_EPSILON to "
    "add noise that hides single devices across releases too; the public also sees rounded "
    "numbers only."
)
"""What k-anonymity alone cannot stop (README, ``GET /api/v1/privacy``)."""


def privacy_summary(policy: PublishPolicy) -> dict[str, object]:
    """Return the privacy parameters in force and, with DP, the budget they spend per device.

    The budget (:func:`heatmap.dp.budget`) states epsilon per release, per closed window, per
    ping and per day under basic composition, the noise a reader sees and the noisy threshold.
    """
    dp = None
    if policy.dp_epsilon:
        dp = budget(
            policy.dp_epsilon,
            len(policy.resolutions),
            policy.release_s,
            policy.horizon_s,
            policy.window_s,
            k_min=policy.k_min,
        )
    return {
        "k_min": policy.k_min,
        "unit": "device",
        "expansion": policy.expansion,
        "resolutions": list(policy.resolutions),
        "release_s": policy.release_s,
        "horizon_s": policy.horizon_s,
        "window_s": policy.window_s,
        "dp_epsilon": policy.dp_epsilon,
        "dp": dp,
        "temporal_limit": None if dp else {"en": TEMPORAL_LIMIT},
    }


def legend(policy: PublishPolicy) -> dict[str, object]:
    """Return the structured legend: bands with colours, zh/en labels and thresholds."""
    bands = make_bands(policy.bands_km2)
    out = []
    for i, b in enumerate(bands):
        upper = bands[i + 1].lower_km2 if i + 1 < len(bands) else None
        out.append(
            {
                "band": b.name,
                "color": b.color,
                "label": {"en": b.label_en, "zh": b.label_zh},
                "min_km2": b.lower_km2,
                "max_km2": upper,
            }
        )
    return {
        "unit": "people per km2",
        "bands": out,
        "k_min": policy.k_min,
        "dp_epsilon": policy.dp_epsilon,
        "expansion": policy.expansion,
        "suppressed": {
            "en": f"Not enough data: fewer than {policy.k_min} devices, or withheld for privacy",
            "zh": f"数据不足：少于{policy.k_min}台设备，或因隐私保护未显示",
        },
        "privacy": privacy_summary(policy),
    }


def legend_text(policy: PublishPolicy) -> str:
    """Return the legend as one line of text (TileJSON ``legend``)."""
    parts = []
    for b in legend(policy)["bands"]:  # type: ignore[attr-defined]
        hi = f"-{b['max_km2']:,.0f}" if b["max_km2"] else "+"
        parts.append(
            f"{b['color']} {b['label']['en']} / {b['label']['zh']}: {b['min_km2']:,.0f}{hi}"
        )
    text = "People per km2. " + "; ".join(parts)
    text += f". Cells with fewer than {policy.k_min} devices are not shown."
    dp = privacy_summary(policy)["dp"]
    if isinstance(dp, dict):
        text += (
            f" Differential privacy: epsilon={dp['epsilon_per_release']:g} per device per release"
            f" and per window ({dp['epsilon_per_day']:g} per device-day, basic composition);"
            f" cells shown from {dp['threshold']} noisy devices."
        )
    return text


def counts_to_published(counts: pl.DataFrame, policy: PublishPolicy) -> pl.DataFrame:
    """Roll up, apply the privacy rules and expand base-resolution counts into published values.

    ``counts`` has ``w``, ``cell`` (base_res), ``devices`` for any number of windows (or one
    release); the result has ``w``, ``res``, ``cell``, ``people`` for the published cells only.

    Without DP: cells under ``k_min`` devices are withheld and complementary suppression makes
    every atom 0 or at least ``k_min`` (rules 2-3, :func:`heatmap.privacy.suppress`); numbers
    are exact. With ``dp_epsilon`` (rule 5): every cell with a device, at every resolution, gets
    OpenDP's discrete Laplace noise once (scale ``n_resolutions / epsilon``: a device is in one
    cell per resolution), and *which* cells appear is decided on the noisy counts (published at
    or above ``k_min`` plus a margin that a cell under ``k_min`` clears with probability at most
    ``dp.DEFAULT_DELTA``). Everything published is then post-processing of the noisy counts,
    so the atom rule is not applied on top: differences of noisy numbers are noisy too. The
    noise cannot be drawn again (OpenDP samples from a secure generator): callers store the
    result, once per window or release.
    """
    rolled = rollup(counts, policy.base_res, policy.min_res)
    if not policy.dp_epsilon:
        pub = rolled.filter(suppress(rolled, policy.k_min))
        people = pub["devices"].to_numpy().astype(np.float64)
    else:
        release = noisy_publish(
            rolled["devices"].to_numpy().astype(np.int64),
            policy.dp_epsilon,
            len(policy.resolutions),
            policy.k_min,
        )
        pub = rolled.filter(pl.Series(release.published))
        people = release.noisy[release.published].astype(np.float64)
    return pub.select("w", "res", "cell").with_columns(people=pl.Series(people * policy.expansion))


def published_to_snapshots(
    pub: Published, policy: PublishPolicy, version: str, complete: bool
) -> dict[int, Snapshot]:
    """Return one immutable snapshot per resolution with density and band."""
    bands = make_bands(policy.bands_km2)
    parts = {int(k[0]): v for k, v in pub.frame.partition_by("res", as_dict=True).items()}
    snaps = {}
    for res in policy.resolutions:
        part = parts.get(res)
        cells = np.zeros(0, np.uint64) if part is None else part["cell"].to_numpy()
        people = np.zeros(0) if part is None else part["people"].to_numpy()
        order = np.argsort(cells)
        cells, people = cells[order].astype(np.uint64), people[order].astype(np.float64)
        density = people / cell_area_km2(cells) if len(cells) else np.zeros(0)
        snaps[res] = Snapshot(
            window=pub.window,
            res=res,
            version=version,
            complete=complete,
            cells=cells,
            people=people,
            density_km2=density,
            band=density_to_band(density, bands),
            bands=bands,
            dp_epsilon=policy.dp_epsilon,
        )
    return snaps


def version_of(window: Window, counter: int, policy: PublishPolicy, store: str = "") -> str:
    """Return a short version string for a window's or release's snapshot.

    It changes with the data (``counter``), with any field of the publishing policy (its
    ``fingerprint``) and with the store (its identity), so caches keyed by version (tiles,
    tile indexes, cell centres) never hand one snapshot's work to another.
    """
    key = f"{window.start}:{window.end}:{counter}:{policy.fingerprint}:{store}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def round_for_public(snap: Snapshot, step: float) -> Snapshot:
    """Return the public audience's view of a snapshot: people rounded to multiples of ``step``.

    ``step`` is ``k_min * expansion`` (the people ``k_min`` devices stand for), so no public
    number, and no difference of two public numbers, can show a change of fewer than ``k_min``
    devices. A published cell holds at least ``k_min`` devices, so it rounds to at least
    ``step``: nothing published vanishes. Density and band follow from the rounded people (the
    exact density times the cell's area would give the exact count back). The version differs
    from the exact snapshot's, so tiles and ETags of the two views never mix.
    """
    if step <= 0 or not len(snap):
        people = snap.people.copy()
    else:
        people = np.maximum(np.round(snap.people / step), 1.0) * step
    with np.errstate(divide="ignore", invalid="ignore"):
        area = np.where(snap.density_km2 > 0, snap.people / snap.density_km2, 0.0)
        density = np.where(area > 0, people / area, 0.0)
    return Snapshot(
        window=snap.window,
        res=snap.res,
        version=snap.version + "p",
        complete=snap.complete,
        cells=snap.cells.copy(),
        people=people,
        density_km2=density,
        band=density_to_band(density, snap.bands),
        bands=snap.bands,
        dp_epsilon=snap.dp_epsilon,
    )
