"""Static assets of the pages, served by the app itself: Leaflet and plugins from ``node_modules``
(installed from the npm registry by ``make``, never committed) and the pages' own JS/CSS.

Files are read once, gzip-compressed once and kept in memory (a few hundred KB in all). Each
asset's URL carries a short content hash (``?v=``), so responses can be cached for good.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from heatmap.places import DEFAULT_OUTLINE

PACKAGE_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = PACKAGE_DIR / "static"
NODE_MODULES: Final = PACKAGE_DIR.parent.parent / "node_modules"

ROOTS: Final[dict[str, Path]] = {
    "web": STATIC_DIR,
    "vendor/leaflet": NODE_MODULES / "leaflet" / "dist",
    "vendor/leaflet.vectorgrid": NODE_MODULES / "leaflet.vectorgrid" / "dist",
    "data": DEFAULT_OUTLINE.parent,
}
"""URL prefix under ``/assets/`` -> directory it serves."""

SERVED_SUFFIXES: Final = {".js", ".css", ".png", ".svg", ".map", ".geojson"}
"""Only these file types are served from the asset roots."""

GZIP_MIN_BYTES: Final = 1024
"""Smaller files are sent as they are."""


@dataclass(frozen=True)
class Asset:
    """One file ready to send: bytes, gzip bytes (or None), media type and strong ETag."""

    data: bytes
    gzipped: bytes | None
    media_type: str
    etag: str

    @property
    def version(self) -> str:
        """Return the short content hash used as the ``?v=`` cache buster."""
        return self.etag.strip('"')[:10]


class AssetNotFound(LookupError):
    """The asked path is not a servable asset."""


class AssetStore:
    """Assets by URL path (``vendor/leaflet/leaflet.js``), loaded lazily and kept in memory."""

    def __init__(self, roots: dict[str, Path] | None = None) -> None:
        self.roots = dict(ROOTS if roots is None else roots)
        self._cache: dict[str, Asset] = {}
        self._lock = threading.Lock()

    def _resolve(self, path: str) -> Path:
        for prefix, root in self.roots.items():
            if path.startswith(prefix + "/"):
                rel = path[len(prefix) + 1 :]
                file = (root / rel).resolve()
                if (
                    file.suffix in SERVED_SUFFIXES
                    and file.is_relative_to(root.resolve())
                    and file.is_file()
                ):
                    return file
                break
        raise AssetNotFound(path)

    def get(self, path: str) -> Asset:
        """Return the asset at a URL path below ``/assets/``; :class:`AssetNotFound` otherwise."""
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        file = self._resolve(path)
        data = file.read_bytes()
        media = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".geojson":
            media = "application/geo+json"
        if media.startswith("text/") or media.endswith("javascript"):
            media += "; charset=utf-8"
        packed = None
        if len(data) >= GZIP_MIN_BYTES and file.suffix != ".png":
            packed = gzip.compress(data, compresslevel=9, mtime=0)
        asset = Asset(
            data, packed, media, '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'
        )
        with self._lock:
            self._cache[path] = asset
        return asset

    def url(self, root_path: str, path: str) -> str:
        """Return the versioned URL of an asset (``/assets/...?v=hash``), or the plain URL."""
        try:
            version = self.get(path).version
        except (AssetNotFound, OSError):
            return f"{root_path}/assets/{path}"
        return f"{root_path}/assets/{path}?v={version}"

    def missing(self) -> list[str]:
        """Return the asset roots that do not exist (e.g. ``npm install`` not run)."""
        return [str(root) for root in self.roots.values() if not root.is_dir()]
