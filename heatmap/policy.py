"""The publishing policy: every setting that changes a published value, frozen in one value.

Publishing (:mod:`heatmap.publish`) and the commit rules (:mod:`heatmap.commit`) take a
``PublishPolicy``, never the whole ``Settings``. Its ``fingerprint`` hashes *every* field, so
the version of a snapshot (and with it every tile and JSON ETag) changes whenever any of them
does: a field added here is covered without keeping a list in step.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heatmap.config import Settings


@dataclass(frozen=True)
class PublishPolicy:
    """What decides the published values of a window or release: privacy, scale, bands,
    resolutions, and the spans counted (window length, release horizon)."""

    k_min: int
    dp_epsilon: float | None
    expansion: float
    bands_km2: tuple[float, ...]
    min_res: int
    base_res: int
    window_s: int
    horizon_s: int
    release_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> PublishPolicy:
        """Return the policy of ``settings``."""
        return cls(
            k_min=settings.k_min,
            dp_epsilon=settings.dp_epsilon,
            expansion=settings.expansion,
            bands_km2=tuple(settings.bands_km2),
            min_res=settings.min_res,
            base_res=settings.base_res,
            window_s=settings.window_s,
            horizon_s=settings.horizon,
            release_s=settings.release_s,
        )

    @property
    def resolutions(self) -> range:
        """Return the published resolutions, coarse to fine."""
        return range(self.min_res, self.base_res + 1)

    @cached_property
    def fingerprint(self) -> str:
        """Return a short hex digest over every field (names and values)."""
        key = repr([(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)])
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
