"""Settings: one ``HEATMAP_`` prefix, validated, injected (``create_app(settings)``, CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service; see ``.env.example`` and the README."""

    model_config = SettingsConfigDict(env_prefix="HEATMAP_", env_file=".env", extra="ignore")

    db: str = Field("var/heatmap.db", description="SQLite path or postgresql:// URL")
    window_s: int = Field(300, ge=10, le=86400, description="window length, seconds")
    base_res: int = Field(10, ge=0, le=15, description="finest H3 resolution counted")
    min_res: int = Field(5, ge=0, le=15, description="coarsest H3 resolution published")
    k_min: int = Field(10, ge=1, description="suppression threshold, devices")
    dp_epsilon: float | None = Field(None, gt=0, description="DP epsilon per window; None = off")
    expansion: float = Field(1.0, gt=0, description="people per device (sampling factor)")
    allowed_lateness_s: int = Field(120, ge=0, description="watermark lag before a window closes")
    release_s: int = Field(60, ge=1, le=86400, description="release clock: a release every n s")
    horizon_s: int | None = Field(
        None, ge=1, description="trailing horizon of a release, s; None = window_s"
    )
    release_grace_s: int = Field(
        5, ge=0, le=3600, description="a release at t is made once the input passes t + grace"
    )
    release_keep_s: int = Field(
        7200, ge=0, description="how long past releases stay readable (?release=), s"
    )
    secret: str | None = Field(None, description="device-id hashing key; generated if unset")
    ingest_token: str | None = Field(None, description="bearer token for POST /api/v1/pings")
    metrics_token: str | None = Field(
        None, description="bearer token for GET /metrics (operations); unset = not served"
    )
    tz: str = Field("Asia/Shanghai", description="display time zone")
    basemap_url: str = Field(OSM_TILES, description="XYZ basemap template; empty = none")
    basemap_attribution: str = "© OpenStreetMap contributors"
    places_file: Path | None = Field(
        None, description="the city's named places (JSON); unset = the bundled Shanghai set"
    )
    outline_file: Path | None = Field(
        None, description="the city's outline (GeoJSON, WGS-84); unset = the bundled Shanghai one"
    )
    planner_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="bearer tokens of the planner audience (exact values)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    frame_ancestors: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["'self'"])
    bands_km2: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5000.0, 20000.0, 50000.0],
        description="lower bounds of green, yellow, red in people per km2",
    )
    max_future_s: int = Field(3600, ge=0, description="pings further in the future are rejected")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="POST /api/v1/pings limit")
    max_rows: int = Field(200_000, ge=1, description="rows per POSTed batch")
    max_cells: int = Field(20_000, ge=1, description="cells per /api/v1/cells answer")
    tile_cache_mb: int = Field(256, ge=0, description="memory bound of the tile cache; 0 = off")
    max_inflight: int = Field(
        64, ge=0, description="reads in flight above which 503 + Retry-After; 0 = no limit"
    )
    max_inflight_ingest: int = Field(
        4, ge=0, description="POST /api/v1/pings in flight above which 503; 0 = no limit"
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After of a shed request, s")
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="time to receive a request's headers, then its body"
    )
    # -- memory bounds of the read side (issue 19): every cache has one, shown in /metrics --
    snapshot_cache_entries: int = Field(
        48, ge=2, description="snapshot sets kept in memory (one per release or window version)"
    )
    index_cache_mb: int = Field(
        128, ge=0, description="memory bound of the tiles' spatial indexes, MiB; 0 = none kept"
    )
    fill_cache_entries: int = Field(
        12, ge=1, description="multi-resolution fill layers kept (one per version and res)"
    )
    fastpath_cache_mb: int = Field(
        32, ge=0, description="memory bound of the encoded tile answers kept before routing, MiB"
    )
    place_history_entries: int = Field(
        20_000, ge=0, description="closed windows whose named-place values are kept in memory"
    )
    # -- retention and roll-ups (issue 19), measured back from the newest closed window --------
    keep_full_days: float = Field(
        14.0, ge=0, description="closed windows kept at full detail, days; 0 = forever"
    )
    keep_hourly_days: float = Field(
        90.0, ge=0, description="hourly roll-ups kept, days (then daily); 0 = forever"
    )
    keep_daily_days: float = Field(0.0, ge=0, description="daily roll-ups kept, days; 0 = forever")
    rollup_hour_res: int | None = Field(
        None, ge=0, le=15, description="finest res of hourly roll-ups; None = base_res - 1"
    )
    rollup_day_res: int | None = Field(
        None, ge=0, le=15, description="finest res of daily roll-ups; None = base_res - 2"
    )
    compact_every_s: int = Field(
        3600, ge=0, description="how often `heatmap serve` compacts the store, s; 0 = never"
    )
    batch_keep_days: float = Field(
        7.0, gt=0, description="how long batch ids are remembered for idempotent resends, days"
    )
    memory_trim_s: int = Field(
        60, ge=0, description="how often freed heap memory is handed back to the OS, s; 0 = never"
    )
    # -- store health ------------------------------------------------------------------------
    min_free_disk_mb: int = Field(
        256, ge=0, description="free disk below which writes are refused with a 503, MiB"
    )
    # -- crowd warnings (issue 18): watches, alerts, the event stream, webhooks ---------------
    alert_defaults: bool = Field(
        True, description="watch every key place: red now, and forecast red within 2 h"
    )
    alert_open_after: int = Field(
        2, ge=1, le=60, description="releases in a row a rule must hold before an alert opens"
    )
    alert_cooldown_s: int = Field(
        900, ge=0, description="after an alert closes its watch opens no new one for this long, s"
    )
    alert_recent_s: int = Field(
        86400, ge=0, description="closed alerts are listed (and kept) this long, s"
    )
    max_watches: int = Field(1000, ge=0, description="watches planners may create")
    events_keep_s: int = Field(
        7200, ge=60, description="events kept for resuming a stream (Last-Event-ID), s"
    )
    sse_max_clients: int = Field(
        2000, ge=1, description="open /api/v1/events streams above which 503 + Retry-After"
    )
    sse_heartbeat_s: float = Field(15.0, gt=0, le=300, description="event stream heartbeat, s")
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts, host:port or networks (CIDR) webhooks may go to; empty = none",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="one delivery attempt, s")
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="attempts before a message is dead-lettered"
    )
    webhook_backoff_s: float = Field(
        5.0, gt=0, description="delay before the first retry, s; doubled after each failure"
    )
    webhook_backoff_max_s: float = Field(3600.0, gt=0, description="longest retry delay, s")

    @field_validator("webhook_allow", mode="before")
    @classmethod
    def _allow_list(cls, value: object) -> object:
        return _split(value)

    @field_validator(
        "cors_origins", "frame_ancestors", "bands_km2", "planner_tokens", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("places_file", "outline_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.min_res > self.base_res:
            raise ValueError(f"min_res ({self.min_res}) must be <= base_res ({self.base_res})")
        if self.window_s % self.release_s:
            raise ValueError(f"release_s ({self.release_s}) must divide window_s ({self.window_s})")
        if self.horizon < self.release_s or self.horizon % self.release_s:
            raise ValueError(
                f"horizon_s ({self.horizon}) must be a multiple of release_s ({self.release_s})"
            )
        if len(self.bands_km2) != 3 or sorted(self.bands_km2) != self.bands_km2:
            raise ValueError("bands_km2 must be 3 increasing thresholds (green, yellow, red)")
        full, hourly, daily = self.keep_full_days, self.keep_hourly_days, self.keep_daily_days
        if full and hourly and hourly < full:
            raise ValueError(f"keep_hourly_days ({hourly}) must be >= keep_full_days ({full})")
        if hourly and daily and daily < hourly:
            raise ValueError(f"keep_daily_days ({daily}) must be >= keep_hourly_days ({hourly})")
        return self

    @property
    def horizon(self) -> int:
        """Return the trailing horizon of a release in seconds (``horizon_s`` or ``window_s``)."""
        return self.window_s if self.horizon_s is None else self.horizon_s

    @property
    def resolutions(self) -> range:
        """Return the published resolutions, coarse to fine."""
        return range(self.min_res, self.base_res + 1)

    @property
    def hour_res(self) -> int:
        """Return the finest resolution kept by hourly roll-ups (within the published ones)."""
        r = self.base_res - 1 if self.rollup_hour_res is None else self.rollup_hour_res
        return max(self.min_res, min(r, self.base_res))

    @property
    def day_res(self) -> int:
        """Return the finest resolution kept by daily roll-ups (at most the hourly one's)."""
        r = self.base_res - 2 if self.rollup_day_res is None else self.rollup_day_res
        return max(self.min_res, min(r, self.hour_res))

    @property
    def is_postgres(self) -> bool:
        """Return True when ``db`` names a PostgreSQL server."""
        return self.db.startswith(("postgresql://", "postgres://"))

    @property
    def store_dir(self) -> Path:
        """Return the directory beside the embedded store (secret file, exports)."""
        if self.is_postgres:
            return Path("var")
        return Path(self.db).resolve().parent
