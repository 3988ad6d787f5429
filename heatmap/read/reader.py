"""The one read path: resolve a :class:`~heatmap.read.ref.Ref` to a window and hand out its
published snapshots, built once per window version and memoised in one bounded cache.

The HTTP layer, the CLI exports and the PMTiles export all read through a :class:`Reader`;
:class:`heatmap.service.Heatmap` is the write side. A snapshot set is a pure function of the
window's stored values, its version counter and the publishing policy, so the memo is keyed by
``(w, version)`` and a new version simply misses.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from heatmap.config import Settings
from heatmap.errors import BadInput, NotFound
from heatmap.model import Published, Snapshot
from heatmap.policy import PublishPolicy
from heatmap.publish import counts_to_published, published_to_snapshots, version_of
from heatmap.read.catalog import WindowCatalog, WindowList
from heatmap.read.ref import LATEST, Ref
from heatmap.store import Store, WindowInfo

if TYPE_CHECKING:
    from heatmap.service import Heatmap

_EMPTY = pl.DataFrame(schema={"res": pl.Int8, "cell": pl.UInt64, "people": pl.Float64})


class Reader:
    """Resolve windows and hand out their snapshots, memoised per window version.

    Parameters
    ----------
    store : Store
        The store to read (shared with the writer in one process).
    settings : Settings
        The service settings; published values follow their :class:`PublishPolicy`.
    key : bytes
        The service key; seeds the open window's noise so a version always reads the same.
    on_build : callable, optional
        Receives the seconds spent whenever a snapshot set had to be built or loaded.
    """

    MEMO = 48
    """Snapshot sets kept (one per window version)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        key: bytes,
        on_build: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.policy = PublishPolicy.from_settings(settings)
        self.key = key
        self.catalog = WindowCatalog(store, settings.window_s)
        self.on_build = on_build
        self.last_build_s = 0.0
        self._memo: OrderedDict[tuple[int, int], dict[int, Snapshot]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._build_lock = threading.Lock()

    @classmethod
    def of(cls, hm: Heatmap, on_build: Callable[[float], None] | None = None) -> Reader:
        """Return a reader over the store a :class:`Heatmap` writes to."""
        return cls(hm.store, hm.settings, hm.key, on_build)

    def close(self) -> None:
        """Stop the catalog's refresher (the store belongs to its opener)."""
        self.catalog.close()

    def invalidate(self) -> None:
        """Forget what is known about the store's windows (after a commit)."""
        self.catalog.invalidate()

    # -- which window -------------------------------------------------------------------------
    def windows(self) -> WindowList:
        """Return the current window list."""
        return self.catalog.current()

    def window(self, ref: Ref = LATEST) -> WindowInfo:
        """Return the window a reference names (the newest one for the latest)."""
        return self.resolve(self.catalog.current(), ref)

    def resolve(self, wl: WindowList, ref: Ref) -> WindowInfo:
        """Return the window of ``wl`` that ``ref`` names; ``NotFound`` if there is none."""
        if ref.at is None:
            info = wl.latest()
            if info is None:
                raise NotFound("no data yet: ingest pings first")
            return info
        found = wl.get(ref.at // self.settings.window_s)
        if found is None:
            have = ""
            if len(wl):
                have = f" (windows run from {wl.info(0).window.isoformat()} to "
                have += f"{wl.info(-1).window.isoformat()})"
            raise NotFound(f"no window at {ref.text}{have}")
        return found

    def latest_closed(self) -> WindowInfo:
        """Return the newest closed window; ``NotFound`` when none has closed yet."""
        found = self.windows().latest_closed()
        if found is None:
            raise NotFound("no closed window yet: only closed windows are final")
        return found

    def previous(self, info: WindowInfo) -> WindowInfo | None:
        """Return the window just before ``info``, if the store has it."""
        return self.catalog.current().get(info.w - 1)

    def check_res(self, res: int) -> int:
        """Return ``res`` if it is published; ``BadInput`` naming the range otherwise."""
        s = self.settings
        if not s.min_res <= res <= s.base_res:
            raise BadInput(f"res {res} out of range [{s.min_res}, {s.base_res}]")
        return res

    # -- snapshots ----------------------------------------------------------------------------
    def peek(self, info: WindowInfo) -> dict[int, Snapshot] | None:
        """Return the memoised snapshots of a window version, or None (never blocks)."""
        return self._memo.get((info.w, info.version))

    def snapshots(self, info: WindowInfo) -> dict[int, Snapshot]:
        """Return the window's snapshots per resolution, building them once per version."""
        key = (info.w, info.version)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        with self._build_lock:  # single flight: concurrent misses build once
            hit = self._memo.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            snaps = self._build(info)
            self.last_build_s = time.perf_counter() - t0
            if self.on_build is not None:
                self.on_build(self.last_build_s)
            with self._memo_lock:
                self._memo[key] = snaps
                while len(self._memo) > self.MEMO:
                    self._memo.popitem(last=False)
        return snaps

    def snapshot(self, ref: Ref, res: int) -> Snapshot:
        """Return one resolution's snapshot of the window ``ref`` names."""
        self.check_res(res)
        return self.snapshots(self.window(ref))[res]

    def _build(self, info: WindowInfo) -> dict[int, Snapshot]:
        policy = self.policy
        version = version_of(info.window, info.version, policy)
        if info.closed:
            pub = self.store.read_published(info.w) or Published(info.window, _EMPTY)
        else:
            cells, dev = self.store.read_open_counts(info.w)
            counts = pl.DataFrame({"w": np.full(len(cells), info.w), "cell": cells, "devices": dev})
            seed = self.key + info.w.to_bytes(8, "little", signed=True) + version.encode()
            pub = Published(info.window, counts_to_published(counts, policy, noise_seed=seed))
        return published_to_snapshots(pub, policy, version, complete=info.closed)

    def warm(self, ref: Ref) -> bool:
        """Return True when answering for ``ref`` needs no store access and no build."""
        wl = self.catalog.peek()
        if wl is None:
            return False
        try:
            info = self.resolve(wl, ref)
        except (BadInput, NotFound):
            return True  # the answer is an error, known without blocking
        prev = wl.get(info.w - 1)
        return self.peek(info) is not None and (prev is None or self.peek(prev) is not None)
