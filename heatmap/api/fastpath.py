"""An in-process front cache for tiles: a cached tile is answered before routing.

Serving a cached tile is a dictionary lookup; through FastAPI's routing, dependency injection,
validation and middleware stack it would cost several times more than the lookup itself. This
pure ASGI layer answers ``GET /tiles/{z}/{x}/{y}(.mvt|.png|@2x.png)[?window=...]`` when the
tile is already in memory for the current window version (:meth:`TileService.lookup`), with
exactly the headers of the route (:func:`heatmap.api.tiles.tile_answer`), and counts it in the
metrics under the route's template. Everything else (a miss, an error, a CORS request, any
other parameter) goes to the app unchanged, which stays the reference behaviour.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from heatmap.api.caching import accepts_gzip
from heatmap.api.dependencies import Services
from heatmap.api.metrics import CacheUse
from heatmap.api.tiles import tile_answer
from heatmap.errors import BadInput
from heatmap.read.ref import LATEST, Ref
from heatmap.tiling import Format, TileRequest

_PATH = re.compile(r"/tiles/(\d{1,2})/(\d{1,8})/(\d{1,8})(\.mvt|\.png|@2x\.png)")
_TEMPLATES = {
    ".mvt": "/tiles/{z}/{x}/{y}.mvt",
    ".png": "/tiles/{z}/{x}/{y}.png",
    "@2x.png": "/tiles/{z}/{x}/{y}@2x.png",
}
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_REFS = {"window": Ref.parse, "release": Ref.parse_release}


class TileFastPath:
    """Pure ASGI middleware answering cached tiles without routing (see the module doc)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.svc = services
        self.max_bytes = services.settings.fastpath_cache_mb << 20
        """Bound of the answers kept (bodies + 512 bytes each): HEATMAP_FASTPATH_CACHE_MB."""
        services.extra_caches["tile_answers"] = lambda: CacheUse(
            "tile_answers", len(self._memo), self._memo_bytes, self.max_bytes, "bytes"
        )
        # (path, query, gzip) -> (window list it was valid for, raw headers, body). A window list
        # object is replaced whenever the store changes, so identity means "same versions".
        self._memo: dict[tuple[str, bytes, bool], tuple[object, list[tuple[bytes, bytes]], bytes]]
        self._memo = {}
        self._memo_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a cached tile, or pass the request on."""
        if scope["type"] == "http" and scope["method"] == "GET":
            m = _PATH.fullmatch(scope["path"])
            if m is not None and await self._answer(scope, send, m):
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send, m: re.Match[str]) -> bool:
        start = time.perf_counter()
        svc = self.svc
        if svc.closed:
            return False
        inm = ae = None
        for k, v in scope["headers"]:
            if k == b"if-none-match":
                inm = v.decode("latin-1")
            elif k == b"accept-encoding":
                ae = v.decode("latin-1")
            elif k in (b"origin", b"authorization"):
                return False  # CORS, or a planner: the app answers
        suffix = m.group(4)
        fmt: Format = "mvt" if suffix == ".mvt" else "png"
        gz = fmt == "mvt" and accepts_gzip(ae)
        wl = svc.reader.catalog.peek()
        key = (scope["path"], scope["query_string"], gz)
        if inm is None and wl is not None:
            hit = self._memo.get(key)
            if hit is not None and hit[0] is wl:
                await self._send(send, 200, hit[1], hit[2])
                svc.metrics.observe("GET", _TEMPLATES[suffix], 200, time.perf_counter() - start)
                return True
        ref = LATEST
        if scope["query_string"]:
            params = parse_qsl(scope["query_string"].decode("latin-1"))
            if len(params) != 1 or params[0][0] not in _REFS or len(params[0][1]) > 64:
                return False
            try:
                ref = _REFS[params[0][0]](params[0][1])
            except BadInput:
                return False  # the app answers the 422
        req = TileRequest(
            fmt, int(m.group(1)), int(m.group(2)), int(m.group(3)), 2 if suffix[0] == "@" else 1,
            ref,
        )  # fmt: skip
        try:
            tile = svc.tiles.lookup(req)
        except Exception:  # noqa: BLE001 - the app maps every error to its status
            return False
        if tile is None:
            return False
        status, headers, body = tile_answer(svc.tiles, tile, inm, "gzip" if gz else None)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append(_NOSNIFF)
        if status == 200:
            raw.append((b"content-length", str(len(body)).encode()))
            if inm is None and wl is not None:
                self._remember(key, wl, raw, body)
        await self._send(send, status, raw, body)
        svc.metrics.observe("GET", _TEMPLATES[suffix], status, time.perf_counter() - start)
        return True

    def _remember(
        self, key: tuple[str, bytes, bool], wl: object, raw: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        cost = len(body) + 512
        if cost > self.max_bytes:
            return
        old = self._memo.pop(key, None)
        if old is not None:
            self._memo_bytes -= len(old[2]) + 512
        if self._memo_bytes + cost > self.max_bytes:
            self._memo.clear()
            self._memo_bytes = 0
        self._memo[key] = (wl, raw, body)
        self._memo_bytes += cost

    @staticmethod
    async def _send(send: Send, status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
