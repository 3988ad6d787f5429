"""The privacy budget of the settings in force, per device, under basic composition.

Pure arithmetic over the publication schedule (releases, windows) and the noise of
:mod:`heatmap.dp.noise`; ``GET /api/v1/privacy``, the legend and TileJSON state its figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from heatmap.dp.noise import (
    DEFAULT_DELTA,
    SECONDS_PER_DAY,
    NoiseStats,
    _check_eps_sens,
    noise_stats,
    presence_delta,
    publish_threshold,
)

# --------------------------------------------------------------------------------------------
# Budget accountant
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Privacy budget of the settings in force, per device, under basic composition.

    Attributes
    ----------
    epsilon : float
        Epsilon of one publication (one release or one closed window) for one device.
    n_resolutions : int
        Published resolutions = L1 sensitivity of one publication.
    release_s, horizon_s, window_s : int
        Release clock, trailing horizon of a release, window length (seconds).
    releases_per_day, windows_per_day : int
        ``ceil(86400 / release_s)``, ``ceil(86400 / window_s)``.
    releases_per_ping : int
        ``ceil(horizon_s / release_s)``: releases whose horizon one ping can fall in.
    epsilon_per_release, epsilon_per_window : float
        Both ``epsilon``: each is one separate publication of the same counting query.
    epsilon_per_ping : float
        ``epsilon * (releases_per_ping + 1)``: one ping touches those releases and one window.
    epsilon_per_day : float
        ``epsilon * (releases_per_day + windows_per_day)``: a device pinging all day takes part
        in every release and every window (basic, i.e. sequential, composition).
    k_min, delta_per_cell, threshold, delta_per_release, delta_per_ping, delta_per_day
        Noisy-threshold figures when ``k_min`` is given (else ``None``). The deltas compose
        additively like the epsilons.
    noise : NoiseStats
        Spread of the noise on one cell (sd, 90% interval).
    """

    epsilon: float
    n_resolutions: int
    release_s: int
    horizon_s: int
    window_s: int
    releases_per_day: int
    windows_per_day: int
    releases_per_ping: int
    epsilon_per_release: float
    epsilon_per_window: float
    epsilon_per_ping: float
    epsilon_per_day: float
    noise: NoiseStats
    k_min: int | None = None
    delta_per_cell: float | None = None
    threshold: int | None = None
    delta_per_release: float | None = None
    delta_per_ping: float | None = None
    delta_per_day: float | None = None

    def explanation(self) -> str:
        """Return a one-paragraph plain-English explanation of these numbers."""
        n = self.noise
        text = (
            "Every published count is changed by random whole-number noise from OpenDP's discrete "
            f"Laplace mechanism (scale {n.scale:.3g} devices: typically off by {n.mean_abs:.1f} "
            f"devices, and within ±{n.half_width} devices {n.level:.0%} of the time). The noise "
            "for each cell of each release or closed window is drawn once and kept, so asking "
            "again never averages it away. "
        )
        if self.threshold is not None and self.k_min is not None:
            text += (
                f"A cell is shown only when its noisy count reaches {self.threshold} devices "
                f"(k = {self.k_min} plus a safety margin), so a cell with fewer than "
                f"{self.k_min} devices appears with probability at most "
                f"{self.delta_per_cell:.0e}. "
            )
        text += (
            f"A device lies in one cell at each of the {self.n_resolutions} published "
            f"resolutions, and the noise is sized for that: each release (every "
            f"{self.release_s} s, covering the last {self.horizon_s} s) and each closed "
            f"{self.window_s} s window is one publication costing epsilon = "
            f"{self.epsilon:g} for any one device. One ping can appear in at most "
            f"{self.releases_per_ping} releases and 1 window, so a single ping is protected at "
            f"epsilon = {self.epsilon_per_ping:g}. A device that pings all day takes part in "
            f"{self.releases_per_day} releases and {self.windows_per_day} windows; adding these "
            f"up (basic composition) its whole day is protected only at epsilon = "
            f"{self.epsilon_per_day:g}, which is a weak guarantee: the noise hides single pings "
            "and short visits, not a person's presence or routine over a whole day."
        )
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (``GET /api/v1/privacy``), with ``explanation.en``."""
        d = asdict(self)
        d["noise"] = self.noise.to_dict()
        d["mechanism"] = "OpenDP discrete Laplace (make_laplace, integer vector), noisy threshold"
        d["composition"] = "basic (sequential)"
        d["unit"] = "device"
        d["explanation"] = {"en": self.explanation()}
        return d


def make_budget(
    epsilon: float,
    n_resolutions: int,
    release_s: int,
    horizon_s: int,
    window_s: int,
    *,
    k_min: int | None = None,
    delta: float = DEFAULT_DELTA,
) -> Budget:
    """Return the :class:`Budget` for the settings.

    Parameters
    ----------
    epsilon : float
        Epsilon per publication (``HEATMAP_DP_EPSILON``).
    n_resolutions : int
        Number of published resolutions (L1 sensitivity).
    release_s, horizon_s, window_s : int
        Release clock, horizon and window length in seconds, each >= 1.
    k_min : int, optional
        When given, also the noisy threshold and the deltas.
    delta : float, default 1e-6
        Per-cell bound for the noisy threshold.

    Returns
    -------
    Budget
        With

        .. math::

            \\varepsilon_{ping} = \\varepsilon(\\lceil h/r \\rceil + 1), \\qquad
            \\varepsilon_{day} = \\varepsilon(\\lceil 86400/r \\rceil + \\lceil 86400/w \\rceil).
    """
    _check_eps_sens(epsilon, n_resolutions)
    for name, v in (("release_s", release_s), ("horizon_s", horizon_s), ("window_s", window_s)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    releases_per_day = math.ceil(SECONDS_PER_DAY / release_s)
    windows_per_day = math.ceil(SECONDS_PER_DAY / window_s)
    releases_per_ping = math.ceil(horizon_s / release_s)
    eps = float(epsilon)
    extra: dict[str, Any] = {}
    if k_min is not None:
        thr = publish_threshold(k_min, eps, n_resolutions, delta)
        d_rel = presence_delta(eps, n_resolutions, thr)
        extra = {
            "k_min": int(k_min),
            "delta_per_cell": float(delta),
            "threshold": thr,
            "delta_per_release": d_rel,
            "delta_per_ping": min(1.0, d_rel * (releases_per_ping + 1)),
            "delta_per_day": min(1.0, d_rel * (releases_per_day + windows_per_day)),
        }
    return Budget(
        epsilon=eps,
        n_resolutions=int(n_resolutions),
        release_s=int(release_s),
        horizon_s=int(horizon_s),
        window_s=int(window_s),
        releases_per_day=releases_per_day,
        windows_per_day=windows_per_day,
        releases_per_ping=releases_per_ping,
        epsilon_per_release=eps,
        epsilon_per_window=eps,
        epsilon_per_ping=eps * (releases_per_ping + 1),
        epsilon_per_day=eps * (releases_per_day + windows_per_day),
        noise=noise_stats(eps, n_resolutions),
        **extra,
    )


def budget(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return :func:`make_budget` (same arguments) as a JSON-able dict (``GET /api/v1/privacy``).

    The dict holds all :class:`Budget` fields, ``noise`` (sd, 90% half-width...), ``mechanism``,
    ``composition``, ``unit`` and ``explanation: {"en": ...}``.
    """
    return make_budget(*args, **kwargs).to_dict()
