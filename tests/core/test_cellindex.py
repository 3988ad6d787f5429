"""The numba latLngToCell against h3-py (the H3 C library): every id equal, bit for bit.

h3-py is the reference throughout (h3ronpy too where it is cheaper); the points are built from
h3-py's own pentagon centres and plain geometry, never from the code under test. A fixture makes
the h3ronpy fallback of ``latlng_to_cells`` fail loudly, so everything here is computed natively.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import h3
import h3ronpy.vector
import numpy as np
import numpy.typing as npt
import pytest
from h3.api import basic_int as h3i
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.cellindex import latlng_to_cells, warmup

H3RONPY_CELLS = h3ronpy.vector.coordinates_to_cells
EARTH_KM = 6371.0
RNG_SEED = 20260601

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]


@pytest.fixture(autouse=True, scope="module")
def _native_only() -> Iterator[None]:
    """Make the h3ronpy fallback raise: the ids below must all come from the kernel."""
    warmup()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("latlng_to_cells fell back to h3ronpy")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h3ronpy.vector, "coordinates_to_cells", refuse)
        yield


def h3py_cells(lat: F64, lng: F64, res: int) -> U64:
    f = h3i.latlng_to_cell  # the same C call as h3.str_to_int(h3.latlng_to_cell(...))
    pts = zip(lat.tolist(), lng.tolist(), strict=True)
    return np.fromiter((f(a, b, res) for a, b in pts), dtype=np.uint64, count=len(lat))


def assert_same(ours: U64, ref: U64, lat: F64, lng: F64, res: int, what: str) -> None:
    assert ours.dtype == np.uint64
    bad = np.flatnonzero(ours != ref)
    if bad.size:
        shown = [
            f"({lat[i]!r}, {lng[i]!r}): ours {int(ours[i]):x} != h3 {int(ref[i]):x}"
            for i in bad[:5]
        ]
        pytest.fail(f"{what}, res {res}: {bad.size} of {len(lat)} differ; " + "; ".join(shown))


def check_all_res(lat: F64, lng: F64, what: str, resolutions: range = range(16)) -> None:
    for res in resolutions:
        assert_same(latlng_to_cells(lat, lng, res), h3py_cells(lat, lng, res), lat, lng, res, what)


# --- geometry of the icosahedron, from h3-py's pentagons (its vertices) -----------------------


def to_xyz(lat: F64, lng: F64) -> F64:
    la, ln = np.radians(lat), np.radians(lng)
    return np.stack([np.cos(la) * np.cos(ln), np.cos(la) * np.sin(ln), np.sin(la)], axis=-1)


def to_latlng(p: F64) -> tuple[F64, F64]:
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    return np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1))), np.degrees(np.arctan2(p[:, 1], p[:, 0]))


def pentagon_centres() -> tuple[F64, F64]:
    cells = h3.get_pentagons(0)
    assert len(cells) == 12
    lat, lng = np.array([h3.cell_to_latlng(c) for c in cells]).T
    return lat, lng


def icosahedron() -> tuple[F64, list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Vertices (the pentagon centres), the 30 edges and the 20 faces."""
    v = to_xyz(*pentagon_centres())
    adjacent = v @ v.T > 0.3  # neighbours are 63.4 degrees apart (cos = 0.447), others >= 116
    edges = [(i, j) for i in range(12) for j in range(i + 1, 12) if adjacent[i, j]]
    faces = [
        (i, j, k) for i, j in edges for k in range(j + 1, 12) if adjacent[i, k] and adjacent[j, k]
    ]
    assert len(edges) == 30 and len(faces) == 20
    return v, edges, faces


def around(lat0: F64, lng0: F64, km: float, n: int, rng: np.random.Generator) -> tuple[F64, F64]:
    """``n`` points within ``km`` of each centre (and the centres themselves)."""
    d = np.concatenate([np.zeros(1), km * np.sqrt(rng.uniform(0, 1, n - 1))]) / EARTH_KM
    bearing = rng.uniform(0, 2 * np.pi, n)
    lat = lat0[:, None] + np.degrees(d * np.cos(bearing))
    lng = lng0[:, None] + np.degrees(d * np.sin(bearing)) / np.cos(np.radians(lat0))[:, None]
    return lat.ravel(), ((lng.ravel() + 180.0) % 360.0) - 180.0


# --- tests ---------------------------------------------------------------------------------------

lat_st = st.floats(-90.0, 90.0, allow_nan=False)
lng_st = st.floats(-180.0, 180.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(st.tuples(lat_st, lng_st), min_size=1, max_size=300),
    res=st.integers(0, 15),
)
def test_matches_h3_on_any_points(points: list[tuple[float, float]], res: int) -> None:
    lat = np.array([p[0] for p in points])
    lng = np.array([p[1] for p in points])
    ref = np.array(
        [h3.str_to_int(h3.latlng_to_cell(a, b, res)) for a, b in points], dtype=np.uint64
    )
    assert_same(latlng_to_cells(lat, lng, res), ref, lat, lng, res, "hypothesis")


def test_uniform_sphere_every_resolution() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 200_000
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lng = rng.uniform(-180.0, 180.0, n)
    check_all_res(lat, lng, "uniform on the sphere")


def test_shanghai_resolutions_7_to_12() -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    n = 200_000
    lat = rng.uniform(30.7, 31.9, n)
    lng = rng.uniform(120.8, 122.2, n)
    for res in range(7, 13):
        ours = latlng_to_cells(lat, lng, res)
        ref = np.asarray(H3RONPY_CELLS(lat, lng, res)).astype(np.uint64)
        assert_same(ours, ref, lat, lng, res, "Shanghai vs h3ronpy")
        assert_same(ours, h3py_cells(lat, lng, res), lat, lng, res, "Shanghai vs h3-py")


@pytest.mark.parametrize("km", [300.0, 5.0, 0.005], ids=["300km", "5km", "5m"])
def test_around_the_pentagons(km: float) -> None:
    rng = np.random.default_rng(RNG_SEED + int(km * 1000))
    lat0, lng0 = pentagon_centres()
    lat, lng = around(lat0, lng0, km, 1500, rng)
    check_all_res(lat, lng, f"within {km} km of the pentagons")


def test_along_face_edges() -> None:
    """Points on the icosahedron's edges (the faces' borders) and just off them, both sides."""
    rng = np.random.default_rng(RNG_SEED + 2)
    v, edges, _ = icosahedron()
    offsets = np.array([0.0, 1e-15, -1e-15, 1e-12, -1e-12, 1e-9, -1e-9, 1e-5, -1e-5, 3e-3, -3e-3])
    pts = []
    for i, j in edges:
        t = np.concatenate([[0.5], rng.uniform(0.0, 1.0, 150)])[:, None]
        on = (1 - t) * v[i] + t * v[j]  # a chord point: normalised, on the great circle
        on /= np.linalg.norm(on, axis=1, keepdims=True)
        normal = np.cross(v[i], v[j])
        normal /= np.linalg.norm(normal)
        pts.append((on[:, None, :] + offsets[None, :, None] * normal).reshape(-1, 3))
    lat, lng = to_latlng(np.concatenate(pts))
    check_all_res(lat, lng, "along the face edges")


def test_vertices_and_face_centres() -> None:
    """Right at and around the 12 vertices and the 20 face centres, down to 1e-14 radians."""
    rng = np.random.default_rng(RNG_SEED + 3)
    v, _, faces = icosahedron()
    centres = np.array([v[i] + v[j] + v[k] for i, j, k in faces])
    base = np.concatenate([v, centres / np.linalg.norm(centres, axis=1, keepdims=True)])
    pts = [base]
    for eps in (1e-14, 1e-11, 1e-8, 1e-5, 1e-2):
        jitter = rng.normal(size=(len(base), 40, 3)) * eps
        pts.append((base[:, None, :] + jitter).reshape(-1, 3))
    lat, lng = to_latlng(np.concatenate(pts))
    check_all_res(lat, lng, "at vertices and face centres")


def test_poles_and_antimeridian() -> None:
    rng = np.random.default_rng(RNG_SEED + 4)
    some_lng = np.concatenate([[-180.0, 180.0, 0.0, -0.0, 90.0, -90.0], rng.uniform(-180, 180, 60)])
    some_lat = np.concatenate(
        [[90.0, -90.0, 0.0, -0.0, 89.99999999999999, -89.99999999999999], rng.uniform(-90, 90, 300)]
    )
    tiny = np.array([0.0, 1e-13, 1e-10, 1e-7, 1e-4])
    lat = np.concatenate(
        [
            np.repeat([90.0, -90.0], len(some_lng)),
            np.tile(some_lat, 2),
            np.repeat(90.0 - tiny, len(some_lng)),
            np.repeat(-90.0 + tiny, len(some_lng)),
            np.tile(some_lat, 2 * len(tiny)),
        ]
    )
    lng = np.concatenate(
        [
            np.tile(some_lng, 2),
            np.repeat([180.0, -180.0], len(some_lat)),
            np.tile(some_lng, len(tiny)),
            np.tile(some_lng, len(tiny)),
            np.repeat(np.concatenate([180.0 - tiny, -180.0 + tiny]), len(some_lat)),
        ]
    )
    check_all_res(lat, lng, "at the poles and the antimeridian")


def test_empty_input() -> None:
    out = latlng_to_cells(np.array([], dtype=np.float64), np.array([], dtype=np.float64), 9)
    assert out.dtype == np.uint64
    assert out.shape == (0,)


def test_shapes_layouts_and_errors() -> None:
    rng = np.random.default_rng(RNG_SEED + 5)
    lat = rng.uniform(-60, 60, (40, 5))
    lng = rng.uniform(-180, 180, (40, 5))
    ref = h3py_cells(lat.ravel(), lng.ravel(), 8).reshape(40, 5)
    assert (latlng_to_cells(lat, lng, 8) == ref).all()  # 2-d in, same shape out
    assert (latlng_to_cells(lat[:, 2], lng[:, 2], 8) == ref[:, 2]).all()  # strided views
    assert (latlng_to_cells(lat.astype(np.float32), lng, 8) != 0).all()  # any float dtype
    with pytest.raises(ValueError):
        latlng_to_cells(lat, lng, 16)
    with pytest.raises(ValueError):
        latlng_to_cells(lat, lng[:3], 8)


def test_threads_share_the_kernel() -> None:
    rng = np.random.default_rng(RNG_SEED + 6)
    lat = rng.uniform(30.7, 31.9, 100_000)
    lng = rng.uniform(120.8, 122.2, 100_000)
    whole = latlng_to_cells(lat, lng, 10)
    parts = [slice(i, i + 25_000) for i in range(0, 100_000, 25_000)]
    with ThreadPoolExecutor(4) as ex:
        pieces = list(ex.map(lambda s: latlng_to_cells(lat[s], lng[s], 10), parts))
    assert (np.concatenate(pieces) == whole).all()
