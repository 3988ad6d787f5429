"""Pixel helpers of the browser tests: where a band's colour is painted in a screenshot."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def hex_rgb(color: str) -> np.ndarray:
    """Return ``#rrggbb`` as a float RGB vector."""
    c = color.lstrip("#")
    return np.array([int(c[i : i + 2], 16) for i in (0, 2, 4)], dtype=float)


def blend(color: str, background: str, alpha: float) -> np.ndarray:
    """Return the colour of ``color`` at ``alpha`` over an opaque ``background``."""
    return hex_rgb(color) * alpha + hex_rgb(background) * (1.0 - alpha)


def band_masks(
    png: bytes, colors: dict[str, str], background: str, alpha: float, tol: float = 12.0
) -> dict[str, np.ndarray]:
    """Return, per band, the boolean mask of screenshot pixels within ``tol`` of its colour."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    return {
        band: np.abs(img - blend(c, background, alpha)).max(axis=2) <= tol
        for band, c in colors.items()
    }


def interior_point(mask: np.ndarray, margin: int = 3) -> tuple[int, int] | None:
    """Return ``(x, y)`` of a pixel whose whole ``(2 margin + 1)^2`` square is in the mask."""
    m = mask.astype(np.int32)
    k = 2 * margin + 1
    # Summed-area table: the square sum at every pixel in O(pixels).
    s = np.pad(m, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    box = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    ys, xs = np.nonzero(box == k * k)
    if not len(ys):
        return None
    i = len(ys) // 2
    return int(xs[i]) + margin, int(ys[i]) + margin
