"""An in-process, byte-bounded LRU of rendered tiles, and their strong ETags.

Keys start with the snapshot version, so a new version of a window simply misses: stale tiles
are never served and age out of the LRU (or go at once with :meth:`TileCache.drop_version`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple


class TileKey(NamedTuple):
    """What a rendered tile depends on."""

    version: str
    fmt: str  # "mvt" | "png"
    z: int
    x: int
    y: int
    scale: int = 1


ENTRY_OVERHEAD = 160
"""Bytes charged per entry on top of the tile (key, links), so empty tiles are bounded too."""


def etag(data: bytes, fmt: str) -> str:
    """Return a strong ETag (a quoted string) of a tile's bytes in a format.

    A hash of what is sent (BLAKE2b, 96 bits): equal tags mean equal bytes, and a tile whose
    bytes did not change keeps its tag, whatever happened to the data behind it.

    >>> etag(b"", "png") == etag(b"", "png") != etag(b"", "mvt")
    True
    """
    h = hashlib.blake2b(fmt.encode() + b"\x00" + data, digest_size=12)
    return f'"{h.hexdigest()}"'


class TileCache:
    """A thread-safe LRU of tile bytes, bounded by total size.

    Parameters
    ----------
    max_bytes : int
        Upper bound on the bytes held (tile sizes plus :data:`ENTRY_OVERHEAD` each); 0 disables.

    Notes
    -----
    ``hits`` and ``misses`` count :meth:`get` results (export them as Prometheus counters);
    ``evictions`` counts entries pushed out by the bound.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[TileKey, bytes] = OrderedDict()
        self._by_version: dict[str, set[TileKey]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Bytes currently charged."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: TileKey) -> bytes | None:
        """Return the cached tile and mark it recently used, or ``None``."""
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: TileKey, data: bytes) -> None:
        """Store a tile, evicting least recently used ones beyond ``max_bytes``."""
        cost = len(data) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old) + ENTRY_OVERHEAD
            self._items[key] = data
            self._by_version.setdefault(key.version, set()).add(key)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                k, v = self._items.popitem(last=False)
                self._forget(k, v)
                self.evictions += 1

    def get_or_render(self, key: TileKey, render: Callable[[], bytes]) -> bytes:
        """Return the cached tile, or render, store and return it (renders outside the lock)."""
        data = self.get(key)
        if data is None:
            data = render()
            self.put(key, data)
        return data

    def drop_version(self, version: str) -> int:
        """Remove every tile of a snapshot version; return how many were removed."""
        with self._lock:
            keys = self._by_version.pop(version, set())
            for k in keys:
                v = self._items.pop(k, None)
                if v is not None:
                    self._bytes -= len(v) + ENTRY_OVERHEAD
            return len(keys)

    def clear(self) -> None:
        """Remove everything (counters are kept)."""
        with self._lock:
            self._items.clear()
            self._by_version.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        """Return ``entries``, ``bytes``, ``max_bytes``, ``hits``, ``misses``, ``evictions``."""
        with self._lock:
            return {
                "entries": len(self._items),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }

    def _forget(self, key: TileKey, data: bytes) -> None:
        self._bytes -= len(data) + ENTRY_OVERHEAD
        keys = self._by_version.get(key.version)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_version[key.version]
