"""Differential privacy: OpenDP discrete Laplace noise and noisy threshold (:mod:`.noise`), and
the budget accountant (:mod:`.budget`). Pure: no I/O, no settings."""

from heatmap.dp.budget import Budget, budget, make_budget
from heatmap.dp.noise import (
    DEFAULT_DELTA,
    NoiseStats,
    NoisyRelease,
    laplace_scale,
    measurement,
    noise_stats,
    noisy_counts,
    noisy_publish,
    pmf,
    presence_delta,
    publish_mask,
    publish_threshold,
    tail_probability,
    threshold_margin,
)

__all__ = [
    "DEFAULT_DELTA",
    "Budget",
    "NoiseStats",
    "NoisyRelease",
    "budget",
    "laplace_scale",
    "make_budget",
    "measurement",
    "noise_stats",
    "noisy_counts",
    "noisy_publish",
    "pmf",
    "presence_delta",
    "publish_mask",
    "publish_threshold",
    "tail_probability",
    "threshold_margin",
]
