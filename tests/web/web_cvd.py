"""Colour-vision check of the band palette: simulated CVD, CIEDE2000 distances, WCAG contrast.

Run ``python tests/web/web_cvd.py`` to print the tables of ``docs/accessibility.md``.

Notes
-----
Dichromacy is simulated with the matrices of Machado, Oliveira and Fernandes (2009, severity 1.0),
applied to linear-light sRGB; the result is clipped to the sRGB gamut. Colours are compared in
CIELAB (D65) with the CIEDE2000 difference (Sharma, Wu and Dalal 2005). Achromatopsia is shown
as CIE L* alone. Contrast ratios follow WCAG 2.x (relative luminance).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

PALETTE = {"blue": "#3b6fd4", "green": "#5cd699", "yellow": "#fde725", "red": "#d7191c"}
"""The band colours of ``heatmap.publish`` (kept in sync by the test)."""

MACHADO = {
    "protanopia": [
        [0.152286, 1.052583, -0.204868],
        [0.114503, 0.786281, 0.099216],
        [-0.003882, -0.048116, 1.051998],
    ],
    "deuteranopia": [
        [0.367322, 0.860646, -0.227968],
        [0.280085, 0.672501, 0.047413],
        [-0.011820, 0.042940, 0.968881],
    ],
    "tritanopia": [
        [1.255528, -0.076749, -0.178779],
        [-0.078411, 0.930809, 0.147602],
        [0.004733, 0.691367, 0.303900],
    ],
}
"""Machado et al. (2009) simulation matrices for full dichromacy, linear RGB."""

_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])


def to_linear(color: str) -> np.ndarray:
    """Return the linear-light RGB (0-1) of ``#rrggbb``."""
    c = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_hex(linear: np.ndarray) -> str:
    """Return ``#rrggbb`` of linear RGB (clipped to the gamut)."""
    c = np.clip(linear, 0.0, 1.0)
    s = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return "#" + "".join(f"{round(v * 255):02x}" for v in s)


def simulate(color: str, kind: str) -> np.ndarray:
    """Return the linear RGB a dichromat of ``kind`` perceives for ``color``."""
    return np.clip(np.array(MACHADO[kind]) @ to_linear(color), 0.0, 1.0)


def lab(linear: np.ndarray) -> np.ndarray:
    """Return CIELAB (D65) of linear RGB."""
    xyz = _SRGB_TO_XYZ @ linear / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """Return the CIEDE2000 colour difference of two CIELAB colours (kL = kC = kH = 1)."""
    l1, a1, b1 = lab1
    l2, a2, b2 = lab2
    c_bar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_bar**7 / (c_bar**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dl, dc = l2 - l1, c2p - c1p
    if c1p * c2p == 0:
        dh = 0.0
    elif abs(h2p - h1p) <= 180:
        dh = h2p - h1p
    else:
        dh = h2p - h1p - 360 if h2p > h1p else h2p - h1p + 360
    dhh = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_bar = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_bar = (h1p + h2p) / 2
    else:
        h_bar = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(h_bar - 30))
        + 0.24 * math.cos(math.radians(2 * h_bar))
        + 0.32 * math.cos(math.radians(3 * h_bar + 6))
        - 0.20 * math.cos(math.radians(4 * h_bar - 63))
    )
    d_theta = 30 * math.exp(-(((h_bar - 275) / 25) ** 2))
    rc = 2 * math.sqrt(cp_bar**7 / (cp_bar**7 + 25**7))
    sl = 1 + 0.015 * (l_bar - 50) ** 2 / math.sqrt(20 + (l_bar - 50) ** 2)
    sc = 1 + 0.045 * cp_bar
    sh = 1 + 0.015 * cp_bar * t
    rt = -math.sin(math.radians(2 * d_theta)) * rc
    return math.sqrt(
        (dl / sl) ** 2 + (dc / sc) ** 2 + (dhh / sh) ** 2 + rt * (dc / sc) * (dhh / sh)
    )


def luminance(color: str) -> float:
    """Return the WCAG relative luminance of ``#rrggbb``."""
    return float(np.array([0.2126, 0.7152, 0.0722]) @ to_linear(color))


def contrast(fg: str, bg: str) -> float:
    """Return the WCAG contrast ratio of two colours (1-21)."""
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def pair_distances(palette: dict[str, str], kind: str | None) -> dict[tuple[str, str], float]:
    """Return CIEDE2000 between every two bands, as seen with ``kind`` (None = normal vision)."""
    seen = {b: simulate(c, kind) if kind else to_linear(c) for b, c in palette.items()}
    return {(a, b): ciede2000(lab(seen[a]), lab(seen[b])) for a, b in combinations(palette, 2)}


def report(palette: dict[str, str] = PALETTE) -> str:
    """Return the Markdown tables of the check."""
    kinds: list[str | None] = [None, *MACHADO]
    head = "| pair | normal | " + " | ".join(k for k in MACHADO) + " |"
    lines = [head, "|---" * (len(kinds) + 1) + "|"]
    dist = {k: pair_distances(palette, k) for k in kinds}
    for pair in combinations(palette, 2):
        cells = " | ".join(f"{dist[k][pair]:.1f}" for k in kinds)
        lines.append(f"| {pair[0]} / {pair[1]} | {cells} |")
    lines += ["", "| band | colour | protanopia | deuteranopia | tritanopia | L* (greyscale) |"]
    lines.append("|---|---|---|---|---|---|")
    for band, c in palette.items():
        sims = " | ".join(to_hex(simulate(c, k)) for k in MACHADO)
        lines.append(f"| {band} | {c} | {sims} | {lab(to_linear(c))[0]:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
