"""The tile LRU: memory bound, LRU order, version invalidation, counters, ETags."""

from __future__ import annotations

import threading
import time

from tiles.cache import ENTRY_OVERHEAD, TileCache, TileKey, etag


def key(v: str = "v1", z: int = 12, x: int = 0, y: int = 0, fmt: str = "png") -> TileKey:
    return TileKey(v, fmt, z, x, y, 1)


def test_get_put_and_counters() -> None:
    c = TileCache(10_000)
    assert c.get(key()) is None
    c.put(key(), b"abc")
    assert c.get(key()) == b"abc"
    assert (c.hits, c.misses) == (1, 1)
    assert c.stats()["entries"] == 1
    assert c.nbytes == 3 + ENTRY_OVERHEAD


def test_byte_bound_and_lru_order() -> None:
    per = 100 + ENTRY_OVERHEAD
    c = TileCache(3 * per)
    for i in range(3):
        c.put(key(x=i), bytes(100))
    c.get(key(x=0))  # 0 becomes most recently used; 1 is now the oldest
    c.put(key(x=3), bytes(100))
    assert key(x=1) not in c
    assert all(key(x=i) in c for i in (0, 2, 3))
    assert c.nbytes <= c.max_bytes
    assert c.evictions == 1
    c.put(key(x=9), bytes(10 * per))  # larger than the whole cache: not stored
    assert key(x=9) not in c and len(c) == 3


def test_replacing_an_entry_keeps_the_accounting_exact() -> None:
    c = TileCache(10_000)
    c.put(key(), bytes(500))
    c.put(key(), bytes(100))
    assert c.nbytes == 100 + ENTRY_OVERHEAD


def test_new_version_misses_and_drop_version() -> None:
    c = TileCache(1 << 20)
    for i in range(5):
        c.put(key("v1", x=i), b"old")
    c.put(key("v2"), b"new")
    assert c.get(key("v2", x=1)) is None  # a new snapshot version never sees old tiles
    assert c.drop_version("v1") == 5
    assert len(c) == 1 and c.nbytes == 3 + ENTRY_OVERHEAD
    assert c.drop_version("v1") == 0


def test_get_or_render_renders_once() -> None:
    c = TileCache(1 << 20)
    calls = []

    def render() -> bytes:
        calls.append(1)
        return b"tile"

    assert c.get_or_render(key(), render) == b"tile"
    assert c.get_or_render(key(), render) == b"tile"
    assert len(calls) == 1


def test_thread_safety_under_contention() -> None:
    c = TileCache(50 * (64 + ENTRY_OVERHEAD))

    def work(t: int) -> None:
        for i in range(2000):
            k = key(f"v{t % 3}", x=i % 97)
            if c.get(k) is None:
                c.put(k, bytes(64))
            if i % 500 == 0:
                c.drop_version(f"v{(t + 1) % 3}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.nbytes == sum(64 + ENTRY_OVERHEAD for _ in range(len(c)))
    assert c.nbytes <= c.max_bytes
    assert c.hits + c.misses == 6 * 2000


def test_warm_hit_is_fast() -> None:
    c = TileCache(1 << 20)
    c.put(key(), bytes(3000))
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        c.get(key())
        times.append(time.perf_counter() - t)
    times.sort()
    assert times[len(times) // 2] < 50e-6


def test_etag_is_a_strong_hash_of_the_bytes() -> None:
    a = etag(b"tile bytes", "png")
    assert a.startswith('"') and a.endswith('"') and not a.startswith("W/")
    assert a == etag(b"tile bytes", "png")  # same bytes, same tag, whatever version made them
    others = {etag(b"tile bytez", "png"), etag(b"tile bytes", "mvt"), etag(b"", "png")}
    assert a not in others and len(others) == 3
