"""Static assets of the pages, served by the app itself: Leaflet and plugins from the npm registry
(never committed), the pages' own JS/CSS and the city outline.

Which npm packages are served, and from which of their folders, is written once, in
``package.json`` (``servedAssets``: package -> folder). In a source checkout they are read from
``node_modules`` (``make`` runs ``npm ci``); a wheel carries them inside the package, in
``heatmap/web/vendor/<package>/`` with a copy of ``package.json`` (the build hook
``hatch_build.py`` puts them there), and they are found with :mod:`importlib.resources`.

Files are read once, gzip-compressed once and kept in memory (a few hundred KB in all). Each
asset's URL carries a short content hash (``?v=``), so responses can be cached for good.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import mimetypes
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from heatmap.places import DEFAULT_OUTLINE, city_files

PACKAGE_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = PACKAGE_DIR / "static"
SOURCE_ROOT: Final = PACKAGE_DIR.parent.parent
"""The checkout's root (only meaningful when running from a source tree)."""
NODE_MODULES: Final = SOURCE_ROOT / "node_modules"


def served_npm_packages(package_json: Path) -> dict[str, str]:
    """Return ``servedAssets`` of a ``package.json``: npm package -> folder of it to serve.

    A missing or unreadable file gives ``{}`` (the roots are then reported by ``missing``).
    """
    try:
        doc = json.loads(package_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = doc.get("servedAssets") if isinstance(doc, dict) else None
    return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}


def bundled_vendor_dir() -> Path | None:
    """Return ``heatmap/web/vendor`` of an installed wheel, or None in a source checkout."""
    vendor = resources.files(__package__ or "heatmap.web") / "vendor"
    if isinstance(vendor, Path) and (vendor / "package.json").is_file():
        return vendor
    return None


def vendor_roots() -> dict[str, Path]:
    """Return ``vendor/<package>`` -> the folder serving it: inside the wheel when installed
    from one, else ``node_modules/<package>/<folder>`` of the checkout."""
    bundled = bundled_vendor_dir()
    if bundled is not None:
        names = served_npm_packages(bundled / "package.json")
        return {f"vendor/{name}": bundled / name for name in names}
    table = served_npm_packages(SOURCE_ROOT / "package.json")
    return {f"vendor/{name}": NODE_MODULES / name / sub for name, sub in table.items()}


ROOTS: Final[dict[str, Path]] = {
    "web": STATIC_DIR,
    **vendor_roots(),
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
        if path.startswith("city/"):
            # The outline of the city this process serves (HEATMAP_OUTLINE_FILE or the sample):
            # that one file, never the rest of its folder.
            outline = city_files().outline
            if path == "city/" + outline.name and outline.is_file():
                return outline
            raise AssetNotFound(path)
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
