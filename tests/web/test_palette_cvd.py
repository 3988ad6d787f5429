"""The band palette under simulated colour-vision deficiencies (see docs/accessibility.md)."""

from __future__ import annotations

import numpy as np
import pytest
from web_cvd import MACHADO, PALETTE, ciede2000, contrast, pair_distances, simulate

from heatmap.publish import make_bands

MIN_DELTA_E = 15.0
"""Smallest CIEDE2000 accepted between two bands, for any vision (18.1 with the current
palette, see docs/accessibility.md)."""


def test_palette_is_the_published_one() -> None:
    assert {b.name: b.color for b in make_bands([5000.0, 20000.0, 50000.0])} == PALETTE


def test_ciede2000_matches_the_published_test_data() -> None:
    # Sharma, Wu and Dalal (2005), pairs 1, 7 and 34 of the 34 test pairs.
    assert ciede2000(np.array([50, 2.6772, -79.7751]), np.array([50, 0, -82.7485])) == (
        pytest.approx(2.0425, abs=1e-4)
    )
    assert ciede2000(np.array([50, 0, 0]), np.array([50, -1, 2])) == pytest.approx(2.3669, abs=1e-4)
    assert ciede2000(np.array([2.0776, 0.0795, -1.135]), np.array([0.9033, -0.0636, -0.5514])) == (
        pytest.approx(0.9082, abs=1e-4)
    )


def test_simulation_keeps_greys_grey() -> None:
    for kind in MACHADO:
        grey = simulate("#808080", kind)
        assert np.ptp(grey) < 0.01


@pytest.mark.parametrize("kind", [None, *MACHADO])
def test_bands_stay_apart_for_every_vision(kind: str | None) -> None:
    distances = pair_distances(PALETTE, kind)
    assert min(distances.values()) >= MIN_DELTA_E, distances


def test_page_text_colours_meet_wcag_aa() -> None:
    # Text on the pages' backgrounds (planner.css, widget.css): body, muted, links, errors.
    for fg, bg in [
        ("#1b1b1b", "#ffffff"),
        ("#4a4a4a", "#ffffff"),
        ("#4a4a4a", "#f4f4f4"),
        ("#1a56db", "#ffffff"),
        ("#9b1c1c", "#ffffff"),
        ("#1b1b1b", "#dbe6fb"),
    ]:
        assert contrast(fg, bg) >= 4.5, (fg, bg)
