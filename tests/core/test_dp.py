"""heatmap.dp: OpenDP discrete Laplace noise, noisy threshold, budget accountant.

The noise comes from OpenDP's CSPRNG and cannot be seeded, so the statistical checks use
tolerances with failure probabilities far below 1e-6.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from heatmap import dp

EPS, SENS = 1.0, 6  # defaults: epsilon 1, resolutions 5..10
N_DRAWS = 200_000


@pytest.fixture(scope="module")
def draws() -> np.ndarray:
    return dp.noisy_counts(np.zeros(N_DRAWS, dtype=np.int64), EPS, SENS)


def test_noise_is_integer_and_matches_discrete_laplace(draws: np.ndarray) -> None:
    assert draws.dtype == np.int64 and draws.shape == (N_DRAWS,)
    p = math.exp(-EPS / SENS)
    # P(0) and mean absolute deviation, 6 standard errors.
    p0 = (1 - p) / (1 + p)
    assert abs(np.mean(draws == 0) - p0) < 6 * math.sqrt(p0 * (1 - p0) / N_DRAWS)
    mad = 2 * p / (1 - p * p)
    sd = math.sqrt(2 * p) / (1 - p)
    assert abs(np.mean(np.abs(draws)) - mad) < 6 * sd / math.sqrt(N_DRAWS)
    assert abs(np.mean(draws)) < 6 * sd / math.sqrt(N_DRAWS)
    # Chi-square over |k| <= 40 plus two tail bins, against the exact pmf.
    ks = np.arange(-40, 41)
    expected = dp.pmf(ks, EPS, SENS) * N_DRAWS
    observed = np.array([np.sum(draws == k) for k in ks], dtype=np.float64)
    tail = dp.tail_probability(41, EPS, SENS) * N_DRAWS
    expected = np.append(expected, [tail, tail])
    observed = np.append(observed, [np.sum(draws > 40), np.sum(draws < -40)])
    assert abs(expected.sum() - N_DRAWS) < 1e-6 * N_DRAWS
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    df = len(expected) - 1
    # Wilson-Hilferty: the 1 - 1e-7 quantile of chi2(df) is below df + 8 * sqrt(2 df) here.
    assert chi2 < df + 8 * math.sqrt(2 * df), chi2


def test_noise_adds_to_counts_and_is_not_seeded() -> None:
    counts = np.arange(5_000, dtype=np.int64)
    a = dp.noisy_counts(counts, EPS, SENS)
    b = dp.noisy_counts(counts, EPS, SENS)
    assert not np.array_equal(a, b)
    assert abs(float(np.mean(a - counts))) < 1.0
    assert np.any(a < counts) and np.any(a > counts)
    assert dp.noisy_counts(np.zeros(0, dtype=np.int64), EPS, SENS).shape == (0,)


def test_parallel_chunks_same_distribution() -> None:
    x = dp.noisy_counts(np.zeros(40_000, dtype=np.int64), EPS, SENS, workers=2)
    assert x.shape == (40_000,) and x.dtype == np.int64
    p = math.exp(-EPS / SENS)
    sd = math.sqrt(2 * p) / (1 - p)
    assert abs(float(np.mean(np.abs(x))) - 2 * p / (1 - p * p)) < 6 * sd / math.sqrt(40_000)


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.5, 0.7, 1.0, 2.0, 3.3])
@pytest.mark.parametrize("sens", [1, 6, 7])
def test_opendp_certifies_epsilon(eps: float, sens: int) -> None:
    meas = dp.measurement(eps, sens)
    assert meas.map(sens) <= eps
    assert meas.check(sens, eps)


def test_tail_probability_is_exact_sum_of_pmf() -> None:
    ks = np.arange(-2000, 2001)
    pm = dp.pmf(ks, 0.5, 6)
    assert abs(pm.sum() - 1) < 1e-12
    for m in (-5, 0, 1, 3, 17, 60):
        assert dp.tail_probability(m, 0.5, 6) == pytest.approx(pm[ks >= m].sum(), rel=1e-9)


def test_threshold_margin_is_minimal() -> None:
    for eps, sens, delta in [(1.0, 6, 1e-6), (0.5, 6, 1e-6), (2.0, 1, 1e-3), (1.0, 6, 0.05)]:
        m = dp.threshold_margin(eps, sens, delta)
        assert dp.tail_probability(m + 1, eps, sens) <= delta
        assert m == 0 or dp.tail_probability(m, eps, sens) > delta
    assert dp.threshold_margin(EPS, SENS, 1e-6) == 79
    assert dp.publish_threshold(10, EPS, SENS, 1e-6) == 89


def test_noisy_threshold_hides_cells_below_k() -> None:
    k_min, trials = 10, 20_000
    rel = dp.noisy_publish(np.full(trials, k_min - 1), EPS, SENS, k_min, delta=1e-6)
    assert rel.threshold == 89 and rel.noisy.min() >= 0
    # P(at least 3 of 20k published) <= (20k * 1e-6)^3 / 6 ~ 1e-6
    assert int(rel.published.sum()) <= 2
    big = dp.noisy_publish(np.full(1_000, 1_000), EPS, SENS, k_min)
    assert big.published.all()
    # The decision is on the noisy values, and re-deciding from stored values is the same.
    assert np.array_equal(dp.publish_mask(rel.noisy, rel.threshold), rel.published)


def test_noisy_threshold_empirical_tail_at_loose_delta() -> None:
    k_min, trials, delta = 10, 20_000, 0.05
    rel = dp.noisy_publish(np.full(trials, k_min - 1), EPS, SENS, k_min, delta=delta)
    m = rel.threshold - k_min
    expected = dp.tail_probability(m + 1, EPS, SENS)
    assert expected <= delta
    rate = float(rel.published.mean())
    se = math.sqrt(expected * (1 - expected) / trials)
    assert abs(rate - expected) < 6 * se
    # Decisions come from the noisy values: at exactly k_min - 1 some cells are published.
    assert rate > 0


def test_presence_delta() -> None:
    thr = dp.publish_threshold(10, EPS, SENS)
    d = dp.presence_delta(EPS, SENS, thr)
    assert d == pytest.approx(SENS * dp.tail_probability(thr - 1, EPS, SENS))
    assert d == pytest.approx(1.387e-6, rel=1e-3)  # 6 cells, each P(X >= 88)


def test_noise_stats_exact() -> None:
    s = dp.noise_stats(EPS, SENS)
    ks = np.arange(-5000, 5001)
    pm = dp.pmf(ks, EPS, SENS)
    assert s.sd == pytest.approx(math.sqrt(np.sum(pm * ks**2)), rel=1e-9)
    assert s.mean_abs == pytest.approx(np.sum(pm * np.abs(ks)), rel=1e-9)
    assert s.p_zero == pytest.approx(pm[ks == 0][0], rel=1e-12)
    cover = [pm[np.abs(ks) <= h].sum() for h in (s.half_width - 1, s.half_width)]
    assert cover[0] < 0.9 <= cover[1]
    assert s.half_width == 14 and s.sd == pytest.approx(8.4757, abs=1e-3)


def test_noise_stats_match_draws(draws: np.ndarray) -> None:
    s = dp.noise_stats(EPS, SENS)
    assert float(np.std(draws)) == pytest.approx(s.sd, rel=0.02)
    assert float(np.mean(np.abs(draws) <= s.half_width)) >= 0.9 - 0.005


def test_budget_defaults_equal_formulas() -> None:
    eps, n_res, release_s, horizon_s, window_s = 1.0, 6, 60, 300, 300
    b = dp.budget(eps, n_res, release_s, horizon_s, window_s, k_min=10)
    json.dumps(b)
    assert b["epsilon_per_release"] == eps and b["epsilon_per_window"] == eps
    assert b["releases_per_day"] == 86400 // release_s == 1440
    assert b["windows_per_day"] == 86400 // window_s == 288
    assert b["epsilon_per_day"] == eps * (86400 / release_s + 86400 / window_s) == 1728
    assert b["releases_per_ping"] == math.ceil(horizon_s / release_s) == 5
    assert b["epsilon_per_ping"] == eps * (math.ceil(horizon_s / release_s) + 1) == 6
    assert b["threshold"] == 89 and b["delta_per_cell"] == 1e-6
    assert b["delta_per_release"] == pytest.approx(6 * dp.tail_probability(88, eps, n_res))
    assert b["delta_per_day"] == pytest.approx(b["delta_per_release"] * (1440 + 288))
    assert b["noise"]["half_width"] == 14 and b["noise"]["scale"] == 6
    text = b["explanation"]["en"]
    for needle in ("1728", "epsilon = 6", "89 devices", "±14", "1440 releases", "288 windows"):
        assert needle in text, needle
    assert "people" not in text.split("devices")[0]  # speaks of devices
    b2 = dp.make_budget(0.5, 6, 60, 300, 300)
    assert b2.epsilon_per_day == 864 and b2.threshold is None
    assert "noisy count reaches" not in b2.explanation()


def test_budget_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        dp.budget(0, 6, 60, 300, 300)
    with pytest.raises(ValueError):
        dp.budget(1.0, 0, 60, 300, 300)
    with pytest.raises(ValueError):
        dp.budget(1.0, 6, 0, 300, 300)
    with pytest.raises(ValueError):
        dp.noisy_counts(np.zeros(3, dtype=np.int64), float("inf"), 6)
    with pytest.raises(ValueError):
        dp.threshold_margin(1.0, 6, delta=0)


def test_no_numpy_random_or_float_laplace() -> None:
    src = "\n".join(f.read_text() for f in Path(dp.__file__).parent.glob("*.py"))
    assert "np.random" not in src and "numpy.random" not in src
    assert "import random" not in src and "from random" not in src
    # The only Laplace is OpenDP's make_laplace.
    assert not re.search(r"(?<!make_)laplace\(", src)
    assert "make_laplace(" in src and 'T="i64"' in src
