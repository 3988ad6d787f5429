"""Webhooks: where they may go (no SSRF), how they are signed, and their delivery.

**Where.** ``HEATMAP_WEBHOOK_ALLOW`` lists what a webhook URL may name: host names (``hooks.
example.org``, ``*.example.org``, optionally ``:port``), IP addresses, and networks in CIDR
(``10.20.0.0/16``). A URL is accepted only over http(s), without credentials, when its host
matches an entry; and the addresses its host *resolves to* are checked too: each must be in a
listed network or be the listed IP itself, or else a public (global) address. So a listed host
name whose DNS points into the city's own network (or at 127.0.0.1, or at a cloud metadata
service) is refused, unless that network is listed. The check runs when a watch is created
(a 422) and again before every attempt, and the attempt connects to the very address checked
(the request names the IP; ``Host`` and TLS SNI carry the name), with no proxy and no
redirects, so DNS cannot be switched in between.

**Signed** as the Standard Webhooks specification says: ``webhook-id`` (the message id, the same
on every retry), ``webhook-timestamp`` (epoch seconds of the attempt) and ``webhook-signature``
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` with the watch's secret (``whsec_`` +
base64 of 24 random bytes, shown once when the watch is made).

**Delivered** at least once from the store's outbox (:class:`WebhookSender`): each watch's
messages in order (only the oldest pending one of a watch is ever attempted), a 2xx answer
delivers, anything else is retried after ``HEATMAP_WEBHOOK_BACKOFF_S`` doubled after each
failure (at most ``HEATMAP_WEBHOOK_BACKOFF_MAX_S``), and after ``HEATMAP_WEBHOOK_MAX_ATTEMPTS``
the message is dead (kept, shown on the watch) and the next one goes. A message being sent is
leased in the store, so two nodes never send it at once, and a process killed mid-send leaves
it to be sent again once the lease runs out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx

import heatmap
from heatmap.alerts.loop import PollLoop
from heatmap.config import Settings
from heatmap.errors import BadInput, HeatmapError
from heatmap.store import Store
from heatmap.store.alert_rows import OutboxRow

log = logging.getLogger("heatmap.alerts")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], list[str]]

MAX_URL: Final = 2000
SECRET_BYTES: Final = 24


def new_secret() -> str:
    """Return a new signing secret (``whsec_`` + base64 of 24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value of a message (Standard Webhooks ``v1``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class AllowList:
    """What ``HEATMAP_WEBHOOK_ALLOW`` lets a webhook name: host patterns and networks."""

    hosts: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[Net, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AllowList:
        """Return the allow-list of the setting's entries (``BadInput`` for a malformed one)."""
        hosts: list[tuple[str, int | None]] = []
        nets: list[Net] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if "/" in entry:
                try:
                    nets.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise BadInput(f"HEATMAP_WEBHOOK_ALLOW: bad network {raw!r}") from None
                continue
            host, port = _host_port(entry)
            if not host:
                raise BadInput(f"HEATMAP_WEBHOOK_ALLOW: bad entry {raw!r}")
            hosts.append((host, port))
        return cls(tuple(hosts), tuple(nets))

    def names(self, host: str, port: int) -> bool:
        """Return True when a URL's host (and port) matches an entry."""
        ip = _ip(host)
        if ip is not None and any(ip in n for n in self.networks):
            return True
        for pattern, want in self.hosts:
            if want is not None and want != port:
                continue
            if pattern == host or (
                pattern.startswith("*.") and host.endswith(pattern[1:]) and ip is None
            ):
                return True
        return False

    def reaches(self, addr: IP, host: str) -> bool:
        """Return True when an address a host resolved to may be connected to."""
        if addr.is_unspecified or addr.is_multicast:
            return False
        if any(addr in n for n in self.networks):
            return True
        if any(_ip(p) == addr for p, _ in self.hosts):
            return True  # an IP literal listed as it is
        return addr.is_global


def _ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _host_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def system_resolve(host: str, port: int) -> list[str]:
    """Return the addresses a host name resolves to (every family)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Destination:
    """A checked webhook URL: its parts and the one address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    def request_url(self) -> str:
        """Return the URL naming the checked address instead of the host."""
        parts = urlsplit(self.url)
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((parts.scheme, f"{addr}:{self.port}", parts.path or "/", parts.query, ""))

    def host_header(self) -> str:
        """Return the ``Host`` header of the original URL."""
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def check_url(url: str, allow: AllowList, resolve: Resolve = system_resolve) -> Destination:
    """Return where a webhook URL may be sent; ``BadInput`` saying why it may not.

    See the module doc: http(s) only, no credentials, the host on the allow-list, and every
    address it resolves to reachable under the allow-list.
    """
    if not allow.hosts and not allow.networks:
        raise BadInput("webhooks are disabled: set HEATMAP_WEBHOOK_ALLOW to the hosts allowed")
    if len(url) > MAX_URL:
        raise BadInput(f"webhook url: longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"webhook url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("webhook url: an http:// or https:// URL with a host is required")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise BadInput("webhook url: no credentials or fragment in the URL")
    if port == 0:
        raise BadInput("webhook url: port 0 cannot be reached")
    host = parts.hostname.lower().rstrip(".")
    port = port or (443 if scheme == "https" else 80)
    if not allow.names(host, port):
        raise BadInput(f"webhook url: {host}:{port} is not in HEATMAP_WEBHOOK_ALLOW")
    literal = _ip(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise BadInput(f"webhook url: cannot resolve {host} ({exc})") from None
    if not addresses:
        raise BadInput(f"webhook url: {host} has no address")
    for a in addresses:
        ip = _ip(a.split("%")[0])
        if ip is None or not allow.reaches(ip, host):
            raise BadInput(
                f"webhook url: {host} resolves to {a}, which HEATMAP_WEBHOOK_ALLOW does not allow"
            )
    return Destination(url, scheme, host, port, addresses[0].split("%")[0])


class WebhookSender:
    """Deliver the outbox's messages from a daemon thread (a few attempts in parallel, each
    watch's messages one at a time, in order)."""

    def __init__(self, store: Store, settings: Settings, resolve: Resolve = system_resolve) -> None:
        self.store = store
        self.settings = settings
        self.allow = AllowList.parse(settings.webhook_allow)
        self.resolve = resolve
        self._loop = PollLoop(
            "webhook-sender",
            "webhook sender: reading the outbox failed",
            log,
            0.5,
            wait_first=False,
        )
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        # No proxy from the environment (it would connect elsewhere than the address checked)
        # and no redirects (a 3xx could point anywhere).
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False
            )
        return self._client

    def backoff(self, attempts: int) -> float:
        """Return the delay before the next attempt after ``attempts`` failures."""
        s = self.settings
        return float(min(s.webhook_backoff_s * 2 ** (attempts - 1), s.webhook_backoff_max_s))

    def send(self, row: OutboxRow) -> str | None:
        """Make one attempt; return None when delivered, else the reason it failed."""
        try:
            dest = check_url(row.url, self.allow, self.resolve)
        except BadInput as exc:
            return str(exc)
        body = row.body.encode()
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": f"heatmap-webhooks/{heatmap.__version__}",
            "host": dest.host_header(),
            "webhook-id": row.msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(row.secret, row.msg_id, ts, body),
        }
        ext = {"sni_hostname": dest.host} if dest.scheme == "https" else {}
        try:
            r = self._http().post(dest.request_url(), content=body, headers=headers, extensions=ext)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= r.status_code < 300:
            return None
        return f"HTTP {r.status_code}"

    def _attempt(self, row: OutboxRow) -> None:
        try:
            error = self.send(row)
            now = time.time()
            attempts = row.attempts + 1
            if error is None:
                self.store.finish_webhook(row.id, "delivered", attempts, now, None, now)
            elif attempts >= self.settings.webhook_max_attempts:
                log.warning("webhook %s to %s is dead after %d attempts: %s",
                            row.msg_id, row.url, attempts, error)  # fmt: skip
                self.store.finish_webhook(row.id, "dead", attempts, now, error, now)
            else:
                retry = now + self.backoff(attempts)
                self.store.finish_webhook(row.id, "pending", attempts, retry, error, now)
        except HeatmapError as exc:  # the store: the lease runs out, the message is tried again
            log.warning("webhook %s: recording the attempt failed: %s", row.msg_id, exc)
        except Exception:  # noqa: BLE001 - the lease runs out and the message is tried again
            log.exception("webhook %s: recording the attempt failed", row.msg_id)
        finally:
            with self._busy_lock:
                self._busy.discard(row.watch_id)
            self._loop.wake()  # the watch's next message may go now

    def run_once(self) -> int:
        """Start the attempts that are due; return how many started."""
        assert self._pool is not None
        now = time.time()
        due = self.store.due_webhooks(now, 64)
        with self._busy_lock:
            due = [r for r in due if r.watch_id not in self._busy]
        if not due:
            return 0
        lease = now + self.settings.webhook_timeout_s + 1.0
        with self.store.transaction():  # one commit for every lease taken
            mine = [r for r in due if self.store.lease_webhook(r.id, now, lease)]
        for row in mine:  # the others are another node's
            with self._busy_lock:
                self._busy.add(row.watch_id)
            self._pool.submit(self._attempt, row)
        return len(mine)

    def wake(self) -> None:
        """Look for due messages now (new ones were committed)."""
        self._loop.wake()

    def start(self) -> None:
        """Deliver on a daemon thread until :meth:`stop`."""
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook")
        self._loop.start(self.run_once)

    def stop(self) -> None:
        """Stop sending (attempts in flight finish or time out first)."""
        self._loop.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
