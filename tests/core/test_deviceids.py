"""A file's device ids as dense codes (heatmap.deviceids) against a plain dictionary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap import _jit
from heatmap.deviceids import _AHEAD, MAX_ID_BYTES, DeviceCodes

_IDS = st.text(min_size=1, max_size=40).filter(lambda s: 1 <= len(s.encode()) <= MAX_ID_BYTES)
_CHUNKS = st.lists(st.lists(st.sampled_from([f"d{i}" for i in range(60)]) | _IDS, max_size=80))


def _check(codes: DeviceCodes, chunks: list[list[str]], as_array) -> None:  # type: ignore[no-untyped-def]
    """Encode every chunk; codes must be 0, 1, ... in order of first appearance, equal ids
    equal codes, and ``ids()`` must give the ids back."""
    seen: dict[str, int] = {}
    for chunk in chunks:
        out = codes.encode(as_array(chunk))
        assert out is not None and out.dtype == np.uint32
        for value, code in zip(chunk, out.tolist(), strict=True):
            assert seen.setdefault(value, len(seen)) == code
    assert codes.size == len(seen)
    assert codes.ids().to_pylist() == list(seen)
    assert codes.ids(1, 3).to_pylist() == list(seen)[1:3]


@pytest.fixture(scope="module", autouse=True)
def _kernels() -> None:
    _jit.warmup(now=True)


@settings(max_examples=150, deadline=None)
@given(_CHUNKS, st.integers(2, 12), st.sampled_from(["string", "large", "dict"]))
def test_codes_match_a_dictionary(chunks: list[list[str]], bits: int, kind: str) -> None:
    def as_array(values: list[str]) -> pa.Array:
        arr = pa.array(values, pa.large_string() if kind == "large" else pa.string())
        return pc.dictionary_encode(arr) if kind == "dict" else arr

    # A small first table: every few new ids it grows (and moves every entry).
    _check(DeviceCodes(bits=bits), chunks, as_array)


@settings(max_examples=60, deadline=None)
@given(_CHUNKS, st.integers(0, 4))
def test_python_path_then_kernels_keep_the_same_codes(chunks: list[list[str]], cut: int) -> None:
    """The first chunks while numba is 'not loaded' go through a dictionary; the table built
    from them when the kernels start must give every id the code it already has."""
    codes = DeviceCodes(bits=2)
    seen: dict[str, int] = {}
    for i, chunk in enumerate(chunks):
        arr = pa.array(chunk, pa.string())
        out = codes._encode_py(arr) if i < cut and codes._slots is None else codes.encode(arr)
        assert out is not None
        for value, code in zip(chunk, out.tolist(), strict=True):
            assert seen.setdefault(value, len(seen)) == code
    assert codes.ids().to_pylist() == list(seen)


@pytest.mark.parametrize("n", [1, _AHEAD - 1, _AHEAD, _AHEAD + 1, 3 * _AHEAD + 5, 5000])
def test_lookups_hashed_ahead_give_each_row_its_own_code(n: int) -> None:
    """Known ids are hashed a few rows before their probe: each row must still get the code
    of its own id, at the start and the end of a column too, with new ids and (failing the
    column) a bad one among them."""
    codes = DeviceCodes(bits=4)
    known = [f"dev-{i:04d}" for i in range(300)]
    assert codes.encode(pa.array(known)) is not None
    rows = [known[(7 * i) % 300] for i in range(n)]
    rows[n // 2] = "a-new-id"  # missing from the table: added, with the next code
    out = codes.encode(pa.array(rows))
    assert out is not None
    expect = {v: i for i, v in enumerate(known)} | {"a-new-id": 300}
    assert out.tolist() == [expect[v] for v in rows]
    assert codes.encode(pa.array([*rows[:-1], ""])) is None  # an empty id, last


def test_chunked_columns_are_encoded_chunk_by_chunk() -> None:
    """A CSV block arrives as many arrow chunks: same codes as one array, a bad id anywhere
    fails the column."""
    values = [f"id{i % 7}" for i in range(40)]
    whole = DeviceCodes().encode(pa.array(values))
    parts = pa.chunked_array(
        [pa.array(values[:13]), pa.array(values[13:30]), pa.array(values[30:])]
    )
    chunked = DeviceCodes().encode(parts)
    assert whole is not None and chunked is not None
    assert chunked.tolist() == whole.tolist()
    bad = pa.chunked_array([pa.array(["a"]), pa.array(["", "b"])])
    assert DeviceCodes().encode(bad) is None


def test_integer_ids_are_their_decimal_text() -> None:
    codes = DeviceCodes()
    first = codes.encode(pa.array(["7", "12"]))
    again = codes.encode(pa.array([12, 7, 5], pa.int64()))
    assert first is not None and again is not None
    assert first.tolist() == [0, 1] and again.tolist() == [1, 0, 2]
    assert codes.ids().to_pylist() == ["7", "12", "5"]


@pytest.mark.parametrize(
    "bad", [["a", None], ["a", ""], ["a", "x" * (MAX_ID_BYTES + 1)]], ids=["null", "empty", "long"]
)
def test_an_unusable_id_sends_the_chunk_to_the_general_path(bad: list[str | None]) -> None:
    codes = DeviceCodes()
    assert codes.encode(pa.array(bad, pa.string())) is None
    # the table stays usable, and an id of exactly the limit is fine
    ok = codes.encode(pa.array(["b", "y" * MAX_ID_BYTES]))
    assert ok is not None and codes.ids().to_pylist()[-2:] == ["b", "y" * MAX_ID_BYTES]


def test_many_ids_of_many_lengths() -> None:
    """200,000 distinct ids (UUID-like, hex, short), shuffled and repeated: one code each."""
    rng = np.random.default_rng(5)
    ids = [f"{i:x}" * (1 + i % 5) for i in range(200_000)]
    order = rng.integers(0, len(ids), 600_000)
    codes = DeviceCodes()
    parts = np.array_split(order, 7)
    out = np.concatenate([codes.encode(pa.array([ids[i] for i in part])) for part in parts])  # type: ignore[misc]
    first: dict[str, int] = {}
    for i in order.tolist():
        first.setdefault(ids[i], len(first))
    assert out.tolist() == [first[ids[i]] for i in order.tolist()]
    assert codes.size == len(first)


def test_threads_encoding_at_once_agree() -> None:
    """Four threads encode overlapping chunks at once (known ids are looked up without the
    lock while others are added and the table grows): one code per id, dense, and ``ids()``
    gives each code's id back."""
    import threading

    rng = np.random.default_rng(11)
    ids = [f"{i:016x}" for i in range(150_000)]
    chunks = [rng.integers(0, len(ids), 120_000) for _ in range(16)]
    arrays = [pa.array([ids[i] for i in c.tolist()]) for c in chunks]
    codes = DeviceCodes(bits=4)  # small: grows many times while the threads run
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for j in range(k, len(arrays), 4):
            out = codes.encode(arrays[j])
            assert out is not None
            results[j] = out

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(arrays)
    back = codes.ids().to_pylist()
    seen = set()
    for j, chunk in enumerate(chunks):
        got = results[j]
        assert [back[c] for c in got.tolist()] == [ids[i] for i in chunk.tolist()]
        seen.update(chunk.tolist())
    assert codes.size == len(back) == len(seen)
