"""Differential privacy for published counts: OpenDP discrete Laplace, noisy threshold, budget.

A pure module (no I/O, no settings): the publisher passes plain parameters and stores what it
gets back. DESIGN.md privacy rule 5 is the target:

- noise comes from OpenDP's integer (discrete) Laplace mechanism, never from a floating-point
  sampler;
- it is drawn **once** per (release or closed window, cell) and the caller keeps it, so neither
  repeated queries nor repeated versions can average it away;
- which cells appear is decided on the *noisy* counts (noisy threshold), never on exact ones;
- the budget is stated honestly: epsilon per device per release, per window, per ping and per day.

The noise distribution
----------------------
With integer input, OpenDP's ``make_laplace`` samples the discrete Laplace (two-sided geometric)
distribution exactly:

.. math::

    P(X = k) = \\frac{1 - p}{1 + p}\\, p^{|k|}, \\qquad p = e^{-1/b},
    \\qquad b = \\Delta_1/\\varepsilon,

for every integer ``k``, where ``b`` is the scale and :math:`\\Delta_1` the L1 sensitivity. All the
closed forms below (tail, standard deviation, interval half-width, threshold margin) are exact
for this distribution.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

SECONDS_PER_DAY = 86_400
DEFAULT_DELTA = 1e-6
"""Default per-cell bound on publishing a cell that holds fewer than ``k_min`` devices."""


# --------------------------------------------------------------------------------------------
# Validation and the distribution's closed forms
# --------------------------------------------------------------------------------------------


def _check_eps_sens(epsilon: float, sensitivity: int) -> None:
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int | np.integer):
        raise ValueError(f"sensitivity must be an integer >= 1, got {sensitivity!r}")
    if sensitivity < 1:
        raise ValueError(f"sensitivity must be an integer >= 1, got {sensitivity!r}")


def _check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def laplace_scale(epsilon: float, sensitivity: int) -> float:
    """Return the Laplace scale ``b = sensitivity / epsilon`` (in devices).

    Parameters
    ----------
    epsilon : float
        Privacy loss of one publication (one release or one closed window), > 0.
    sensitivity : int
        L1 sensitivity of the published vector of counts (see :func:`noisy_counts`).

    Returns
    -------
    float
        The scale ``b``; the standard deviation of the continuous Laplace would be ``b*sqrt(2)``,
        the discrete one's is :attr:`NoiseStats.sd`.
    """
    _check_eps_sens(epsilon, sensitivity)
    return sensitivity / epsilon


def _p(epsilon: float, sensitivity: int) -> float:
    """Return ``p = exp(-epsilon / sensitivity)``, the geometric ratio of the pmf."""
    return math.exp(-epsilon / sensitivity)


def pmf(k: int | npt.ArrayLike, epsilon: float, sensitivity: int) -> npt.NDArray[np.float64]:
    """Return the discrete Laplace probability mass ``P(X = k)``.

    Parameters
    ----------
    k : int or array_like of int
        Noise value(s).
    epsilon, sensitivity
        As in :func:`laplace_scale`.

    Returns
    -------
    numpy.ndarray
        :math:`\\frac{1-p}{1+p} p^{|k|}` with :math:`p = e^{-\\varepsilon/\\Delta_1}`.
    """
    _check_eps_sens(epsilon, sensitivity)
    x = epsilon / sensitivity
    p = math.exp(-x)
    c = -math.expm1(-x) / (1.0 + p)
    return np.asarray(c * np.exp(-x * np.abs(np.asarray(k, dtype=np.float64))), dtype=np.float64)


def tail_probability(m: int, epsilon: float, sensitivity: int) -> float:
    """Return ``P(X >= m)`` for the discrete Laplace noise ``X``, exactly.

    Parameters
    ----------
    m : int
        Integer threshold on the noise.
    epsilon, sensitivity
        As in :func:`laplace_scale`.

    Returns
    -------
    float
        :math:`p^m / (1 + p)` for :math:`m \\ge 1`, and :math:`1 - p^{1-m} / (1 + p)` for
        :math:`m \\le 0` (by symmetry), with :math:`p = e^{-\\varepsilon/\\Delta_1}`. Compare the
        continuous approximation :math:`\\tfrac12 e^{-\\varepsilon m/\\Delta_1}`.
    """
    _check_eps_sens(epsilon, sensitivity)
    m = int(m)
    p = _p(epsilon, sensitivity)
    if m >= 1:
        return math.exp(-epsilon * m / sensitivity) / (1.0 + p)
    return 1.0 - math.exp(-epsilon * (1 - m) / sensitivity) / (1.0 + p)


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def measurement(epsilon: float, sensitivity: int) -> Any:
    """Return the OpenDP vector discrete-Laplace measurement for ``(epsilon, sensitivity)``.

    Built with ``make_laplace(vector_domain(atom_domain(T="i64")), l1_distance(T="i64"),
    scale)``. The scale starts at ``sensitivity / epsilon`` and is nudged up by floating-point
    ulps until OpenDP's own privacy map certifies ``map(sensitivity) <= epsilon`` (a division
    can round the scale down by one ulp, which OpenDP would then charge as a hair over epsilon).

    Parameters
    ----------
    epsilon, sensitivity
        As in :func:`laplace_scale`.

    Returns
    -------
    opendp.mod.Measurement
        Callable on a sequence (or int64 array) of counts, returning a list of noisy ints.
    """
    import opendp.prelude as dp

    _check_eps_sens(epsilon, sensitivity)
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    scale = sensitivity / epsilon
    for _ in range(64):
        meas = dp.m.make_laplace(*space, scale=scale)
        if meas.check(int(sensitivity), float(epsilon)):
            return meas
        scale = math.nextafter(scale, math.inf)
    raise RuntimeError(f"OpenDP could not certify epsilon={epsilon} at sensitivity {sensitivity}")


def noisy_counts(
    devices: npt.ArrayLike, epsilon: float, sensitivity: int, *, workers: int = 1
) -> npt.NDArray[np.int64]:
    """Add discrete Laplace noise (OpenDP) to integer device counts, one draw per cell.

    Parameters
    ----------
    devices : array_like of int, shape (n,)
        Exact distinct-device counts of one publication (one release or one closed window), one
        entry per (resolution, cell). Pass **every** cell holding at least one device, at every
        published resolution: never pre-filter on the exact counts (that would leak presence).
    epsilon : float
        Privacy loss of this publication for one device, > 0.
    sensitivity : int
        L1 sensitivity of the whole vector. A device is counted once per resolution and, at each
        resolution, lies in exactly one cell (its single latest position). Adding or removing one
        device therefore changes exactly one entry per resolution by exactly 1, so the L1 distance
        between neighbouring count vectors is at most the number of published resolutions (6 for
        resolutions 5-10). Moving a device changes up to 2 entries per resolution (L1 ``2 * n_res``
        under change-one semantics); the add/remove neighbour relation is the one used here.
    workers : int, default 1
        Split the vector into this many chunks noised in parallel threads (OpenDP releases the
        GIL). The noise is i.i.d. per entry, so chunking does not change its distribution.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        ``devices + X`` with i.i.d. :math:`X \\sim` discrete Laplace(scale = sensitivity /
        epsilon), **not** clamped (see :func:`noisy_publish` for clamping and selection).

    Notes
    -----
    One call of the vector measurement is one ``epsilon``-DP publication (pure DP,
    ``MaxDivergence``) of the whole vector. The sampler inside OpenDP draws from a
    cryptographically secure RNG: the noise is **not reproducible** from a seed and two calls
    give different noise. A caller must therefore draw once per (release or closed window,
    cell), store the noisy value and serve the stored value ever after (DESIGN rule 5);
    re-noising on every request or version lets an attacker average the noise away.
    """
    arr = np.ascontiguousarray(np.asarray(devices), dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"devices must be one-dimensional, got shape {arr.shape}")
    meas = measurement(float(epsilon), int(sensitivity))
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if workers <= 1 or arr.size < 10_000:
        return np.asarray(meas(arr), dtype=np.int64)
    chunks = np.array_split(arr, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(meas, chunks))
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


# --------------------------------------------------------------------------------------------
# Noisy threshold
# --------------------------------------------------------------------------------------------


def threshold_margin(epsilon: float, sensitivity: int, delta: float = DEFAULT_DELTA) -> int:
    """Return the smallest margin ``m >= 0`` with ``P(X >= m + 1) <= delta``.

    A cell with ``c <= k_min - 1`` true devices is published under threshold ``k_min + m`` iff
    ``c + X >= k_min + m``, i.e. ``X >= k_min + m - c >= m + 1``. So this margin bounds the
    probability of publishing any cell below ``k_min`` by ``delta``.

    Parameters
    ----------
    epsilon, sensitivity
        As in :func:`laplace_scale`.
    delta : float, default 1e-6
        Per-cell bound, in (0, 1).

    Returns
    -------
    int
        ``m = max(0, ceil(log(delta * (1 + p)) / log p) - 1)`` with ``p = exp(-epsilon /
        sensitivity)``, checked against :func:`tail_probability` to rule out rounding.
    """
    _check_eps_sens(epsilon, sensitivity)
    _check_delta(delta)
    p = _p(epsilon, sensitivity)
    m = max(0, math.ceil(math.log(delta * (1.0 + p)) / math.log(p)) - 1)
    while m > 0 and tail_probability(m, epsilon, sensitivity) <= delta:
        m -= 1
    while tail_probability(m + 1, epsilon, sensitivity) > delta:
        m += 1
    return m


def publish_threshold(
    k_min: int, epsilon: float, sensitivity: int, delta: float = DEFAULT_DELTA
) -> int:
    """Return the noisy-count threshold ``k_min + threshold_margin(epsilon, sensitivity, delta)``.

    Parameters
    ----------
    k_min : int
        k-anonymity threshold in devices (rule 2), >= 1.
    epsilon, sensitivity, delta
        As in :func:`threshold_margin`.

    Returns
    -------
    int
        A cell is published iff its noisy count is at least this value.
    """
    if k_min < 1:
        raise ValueError(f"k_min must be >= 1, got {k_min!r}")
    return int(k_min) + threshold_margin(epsilon, sensitivity, delta)


def presence_delta(epsilon: float, sensitivity: int, threshold: int) -> float:
    """Return the delta of one publication: the chance a lone device's own cells get published.

    Adding one device changes, at each of ``sensitivity`` resolutions, either the count of a
    cell that already holds devices (covered by the pure ``epsilon`` of the Laplace noise) or
    creates a cell with count 1 that did not exist before. Such a new cell is published with
    probability ``P(1 + X >= threshold) = P(X >= threshold - 1)``; a union bound over at most
    ``sensitivity`` new cells gives the delta of the ``(epsilon, delta)`` guarantee.

    Parameters
    ----------
    epsilon, sensitivity
        As in :func:`laplace_scale`.
    threshold : int
        Publication threshold on noisy counts (:func:`publish_threshold`).

    Returns
    -------
    float
        ``sensitivity * P(X >= threshold - 1)``, capped at 1.
    """
    return min(1.0, sensitivity * tail_probability(int(threshold) - 1, epsilon, sensitivity))


@dataclass(frozen=True)
class NoisyRelease:
    """Noisy counts of one publication and which cells clear the noisy threshold.

    Attributes
    ----------
    noisy : numpy.ndarray of int64
        Noisy device counts clamped at ``>= 0``, one per input cell (store these, all of them or
        at least the published ones, and never redraw).
    published : numpy.ndarray of bool
        ``noisy >= threshold``: decided on the noisy counts only.
    threshold : int
        ``k_min + margin`` in devices.
    delta : float
        Per-cell bound used for the margin.
    """

    noisy: npt.NDArray[np.int64]
    published: npt.NDArray[np.bool_]
    threshold: int
    delta: float


def publish_mask(noisy: npt.ArrayLike, threshold: int) -> npt.NDArray[np.bool_]:
    """Return ``noisy >= threshold`` (deterministic: re-deciding from stored noise is safe).

    Parameters
    ----------
    noisy : array_like of int
        Stored noisy counts.
    threshold : int
        From :func:`publish_threshold`.

    Returns
    -------
    numpy.ndarray of bool
    """
    return np.asarray(noisy, dtype=np.int64) >= int(threshold)


def noisy_publish(
    devices: npt.ArrayLike,
    epsilon: float,
    sensitivity: int,
    k_min: int,
    delta: float = DEFAULT_DELTA,
    *,
    workers: int = 1,
) -> NoisyRelease:
    """Noise every cell once and decide publication on the noisy counts (noisy threshold).

    Parameters
    ----------
    devices : array_like of int
        Exact device counts of one publication, every cell with >= 1 device at every published
        resolution (see :func:`noisy_counts`).
    epsilon, sensitivity, workers
        As in :func:`noisy_counts`.
    k_min : int
        k-anonymity threshold in devices.
    delta : float, default 1e-6
        Bound on the probability that a cell with fewer than ``k_min`` true devices is published.

    Returns
    -------
    NoisyRelease
        Clamped noisy values (``>= 0``), the publication mask, the threshold and delta.

    Notes
    -----
    With DP on, a cell with fewer than ``k_min`` devices is published with probability at most
    ``delta``, and the presence of any single device is hidden up to ``(epsilon, delta')`` per
    publication, with ``delta' = presence_delta(epsilon, sensitivity, threshold)`` (the chance
    that one of the at most ``sensitivity`` cells a lone device creates clears the threshold;
    1.4e-6 at epsilon 1, 6 resolutions, k 10, delta 1e-6): the published values, and even
    *which* cells are published, are post-processing of the noisy counts and change little
    when one device is added or removed. Further suppression (e.g. the
    atom rule, rule 3) must also be decided on the noisy values to stay post-processing.
    """
    threshold = publish_threshold(k_min, epsilon, sensitivity, delta)
    noisy = noisy_counts(devices, epsilon, sensitivity, workers=workers)
    mask = publish_mask(noisy, threshold)
    return NoisyRelease(
        noisy=np.maximum(noisy, 0), published=mask, threshold=threshold, delta=delta
    )


# --------------------------------------------------------------------------------------------
# What a citizen sees
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseStats:
    """Exact spread of the discrete Laplace noise on one cell, in devices.

    Attributes
    ----------
    epsilon, sensitivity, scale
        Parameters (``scale = sensitivity / epsilon``).
    sd : float
        Standard deviation ``sqrt(2p) / (1 - p)``.
    mean_abs : float
        Mean absolute error ``2p / (1 - p**2)``.
    p_zero : float
        ``P(X = 0) = (1 - p) / (1 + p)``: chance the published count is exact.
    level : float
        Coverage of the interval (e.g. 0.9).
    half_width : int
        Smallest integer ``h`` with ``P(|X| <= h) >= level``.
    """

    epsilon: float
    sensitivity: int
    scale: float
    sd: float
    mean_abs: float
    p_zero: float
    level: float
    half_width: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def noise_stats(epsilon: float, sensitivity: int, level: float = 0.9) -> NoiseStats:
    """Return the noise a citizen sees on any one cell (res 9 or other), in devices.

    Parameters
    ----------
    epsilon, sensitivity
        As in :func:`laplace_scale`. The noise does not depend on the cell's resolution; its
        *relative* size does (it is in devices, multiply by ``expansion`` for people).
    level : float, default 0.9
        Coverage of the symmetric interval.

    Returns
    -------
    NoiseStats
        With :math:`p = e^{-\\varepsilon/\\Delta_1}`: ``sd = sqrt(2p)/(1-p)``, ``mean_abs =
        2p/(1-p^2)``, ``p_zero = (1-p)/(1+p)`` and the half-width ``h``, the smallest integer
        with :math:`P(|X| \\le h) = 1 - 2p^{h+1}/(1+p) \\ge` ``level``.
    """
    _check_eps_sens(epsilon, sensitivity)
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = epsilon / sensitivity
    p = math.exp(-x)
    one_minus_p = -math.expm1(-x)
    # P(|X| > h) = 2 p^(h+1) / (1 + p) <= 1 - level  <=>  h + 1 >= log((1-level)(1+p)/2) / log p
    h = max(0, math.ceil(math.log((1 - level) * (1 + p) / 2) / -x) - 1)
    while h > 0 and 1 - 2 * math.exp(-x * h) / (1 + p) >= level:
        h -= 1
    while 1 - 2 * math.exp(-x * (h + 1)) / (1 + p) < level:
        h += 1
    return NoiseStats(
        epsilon=float(epsilon),
        sensitivity=int(sensitivity),
        scale=sensitivity / epsilon,
        sd=math.sqrt(2 * p) / one_minus_p,
        mean_abs=2 * p / (one_minus_p * (1 + p)),
        p_zero=one_minus_p / (1 + p),
        level=float(level),
        half_width=int(h),
    )
