"""The one read path: resolve a :class:`~heatmap.read.ref.Ref` to a window and hand out its
published snapshots, built once per window version and memoised in one bounded cache.

The HTTP layer, the CLI exports and the PMTiles export all read through a :class:`Reader`;
:class:`heatmap.service.Heatmap` is the write side. A snapshot set is a pure function of the
window's stored values, its version counter and the publishing policy, so the memo is keyed by
``(w, version)`` and a new version simply misses.
"""

from __future__ import annotations

import copy
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
from heatmap.publish import (
    counts_to_published,
    published_to_snapshots,
    round_for_public,
    version_of,
)
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
    on_build : callable, optional
        Receives the seconds spent whenever a snapshot set had to be built or loaded.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        on_build: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.policy = PublishPolicy.from_settings(settings)
        self.store_id = store.identity()
        self.catalog = WindowCatalog(store, settings.window_s, settings.horizon)
        self.on_build = on_build
        self.last_build_s = 0.0
        self.public = False
        """True for the public audience's view (rounded people), see :meth:`as_public`."""
        self.memo_size = settings.snapshot_cache_entries
        """Snapshot sets kept (one per version and audience): ``HEATMAP_SNAPSHOT_CACHE_ENTRIES``."""
        self._memo: OrderedDict[tuple[str, int, int, bool], dict[int, Snapshot]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._build_lock = threading.Lock()

    @classmethod
    def of(cls, hm: Heatmap, on_build: Callable[[float], None] | None = None) -> Reader:
        """Return a reader over the store a :class:`Heatmap` writes to."""
        return cls(hm.store, hm.settings, on_build)

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
        """Return the release or closed window a reference names (default the latest release)."""
        return self.resolve(self.catalog.current(), ref)

    def resolve(self, wl: WindowList, ref: Ref) -> WindowInfo:
        """Return what ``ref`` names in ``wl``; ``NotFound`` if there is none.

        The latest is the latest release (before the first one, the latest closed window). A
        time names the *closed* window containing it: a window still filling undercounts, so
        it is never served (the latest release is the live answer).
        """
        if ref.at is None:
            info = wl.releases.latest() or wl.latest_closed()
            if info is None:
                raise NotFound("no data yet: ingest pings first")
            return info
        if ref.kind == "release":
            return self._release(wl, ref)
        # The history holds roll-ups (hours, days) of what is past the full-detail retention,
        # then the closed windows: a time names the entry that contains it.
        hist = wl.closed()
        found = hist.find(ref.at) or wl.get(ref.at // self.settings.window_s)
        if found is None:
            have = ""
            if len(hist):
                have = f" (the history runs from {hist.info(0).window.isoformat()} to "
                have += f"{hist.info(-1).window.isoformat()})"
            elif len(wl):
                have = f" (windows run from {wl.info(0).window.isoformat()} to "
                have += f"{wl.info(-1).window.isoformat()})"
            raise NotFound(f"no window at {ref.text}{have}")
        if not found.closed:
            raise NotFound(
                f"window {found.window.isoformat()} is still filling: the live answer is the "
                "latest release (omit ?window=)"
            )
        return found

    def _release(self, wl: WindowList, ref: Ref) -> WindowInfo:
        assert ref.at is not None
        release_s = self.settings.release_s
        found = wl.releases.get(ref.at // release_s * release_s)
        if found is None:
            rel = wl.releases
            have = ""
            if len(rel):
                have = f" (releases are kept from {rel.info(0).window.isoformat()} end to "
                have += f"{rel.info(-1).window.isoformat()} end, one every {release_s} s)"
            raise NotFound(f"no release at {ref.text}{have}")
        return found

    def latest_closed(self) -> WindowInfo:
        """Return the newest closed window; ``NotFound`` when none has closed yet."""
        found = self.windows().latest_closed()
        if found is None:
            raise NotFound("no closed window yet: only closed windows are final")
        return found

    def previous(self, info: WindowInfo) -> WindowInfo | None:
        """Return what ``info`` is compared with: like with like.

        For a release, the newest kept release at least one horizon earlier (the same span,
        just before; releases are skipped while no input arrives); for a closed window, the
        window before it; for a roll-up, the hour or day before it. None if the store does not
        have it.
        """
        return self._previous(self.catalog.current(), info)

    def _previous(self, wl: WindowList, info: WindowInfo) -> WindowInfo | None:
        if info.is_release:
            return wl.releases.at_or_before(info.w - self.settings.horizon)
        prev = wl.closed().find(info.window.start - 1)
        if prev is None or not prev.closed or prev.kind != info.kind:
            return None
        return prev

    def check_res(self, res: int) -> int:
        """Return ``res`` if it is published; ``BadInput`` naming the range otherwise."""
        s = self.settings
        if not s.min_res <= res <= s.base_res:
            raise BadInput(f"res {res} out of range [{s.min_res}, {s.base_res}]")
        return res

    # -- snapshots ----------------------------------------------------------------------------
    def peek(self, info: WindowInfo) -> dict[int, Snapshot] | None:
        """Return the memoised snapshots of a window version, or None (never blocks)."""
        return self._memo.get((info.kind, info.w, info.version, self.public))

    def as_public(self) -> Reader:
        """Return a view of this reader for the public audience (same catalog and cache).

        Its snapshots carry rounded people (:func:`heatmap.publish.round_for_public`); the
        planners' view (this reader) carries the exact published values.
        """
        view = copy.copy(self)
        view.public = True
        return view

    def snapshots(self, info: WindowInfo) -> dict[int, Snapshot]:
        """Return the window's snapshots per resolution, building them once per version."""
        if not self.public:
            return self._memoised(info, False, lambda: self._build(info))
        exact = self._memoised(info, False, lambda: self._build(info))
        step = self.policy.k_min * self.policy.expansion
        return self._memoised(
            info, True, lambda: {r: round_for_public(s, step) for r, s in exact.items()}
        )

    def _memoised(
        self, info: WindowInfo, public: bool, build: Callable[[], dict[int, Snapshot]]
    ) -> dict[int, Snapshot]:
        key = (info.kind, info.w, info.version, public)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        with self._build_lock:  # single flight: concurrent misses build once
            hit = self._memo.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            snaps = build()
            self.last_build_s = time.perf_counter() - t0
            if self.on_build is not None:
                self.on_build(self.last_build_s)
            with self._memo_lock:
                self._memo[key] = snaps
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        return snaps

    def memo_stats(self) -> tuple[int, int]:
        """Return the snapshot sets memoised and the bytes of their arrays (both audiences)."""
        with self._memo_lock:
            sets = list(self._memo.values())
        nbytes = sum(
            s.cells.nbytes + s.people.nbytes + s.density_km2.nbytes + s.band.nbytes
            for snaps in sets
            for s in snaps.values()
        )
        return len(sets), nbytes

    def snapshot(self, ref: Ref, res: int) -> Snapshot:
        """Return one resolution's snapshot of the window ``ref`` names."""
        self.check_res(res)
        return self.snapshots(self.window(ref))[res]

    def _build(self, info: WindowInfo) -> dict[int, Snapshot]:
        policy = self.policy
        version = version_of(info.window, info.version, policy, self.store_id)
        if info.is_release or info.closed:
            pub = self.published(info) or Published(info.window, _EMPTY)
        else:
            cells, dev = self.store.read_open_counts(info.w)
            counts = pl.DataFrame({"w": np.full(len(cells), info.w), "cell": cells, "devices": dev})
            # Open windows are never served (tests and tools only): built fresh, never kept.
            pub = Published(info.window, counts_to_published(counts, policy))
        return published_to_snapshots(pub, policy, version, complete=info.closed)

    def published(self, info: WindowInfo) -> Published | None:
        """Return the stored published values of a release, closed window or roll-up."""
        if info.is_release:
            return self.store.read_release(info.w, info.window)
        if info.is_rollup:
            return self.store.read_rollup(info.kind, info.w, info.window)
        return self.store.read_published(info.w)

    def warm(self, ref: Ref) -> bool:
        """Return True when answering for ``ref`` needs no store access and no build."""
        wl = self.catalog.peek()
        if wl is None:
            return False
        try:
            info = self.resolve(wl, ref)
        except (BadInput, NotFound):
            return True  # the answer is an error, known without blocking
        prev = self._previous(wl, info)
        return self.peek(info) is not None and (prev is None or self.peek(prev) is not None)
