"""The compiled H3 indexer checks itself against h3-py once per process, and falls back."""

from __future__ import annotations

from pathlib import Path

import h3ronpy.vector
import numpy as np
import pytest

from heatmap import cellindex


def test_the_kernel_passes_its_check_on_this_platform() -> None:
    cellindex.warmup()
    assert cellindex._TABLES is not None
    assert cellindex._TRUSTED
    assert cellindex._agrees_with_h3(cellindex._TABLES)


@pytest.mark.parametrize("broken", ["face azimuths", "base cells"])
def test_a_kernel_that_disagrees_with_h3_fails_the_check(broken: str) -> None:
    cellindex.warmup()
    t = cellindex._TABLES
    assert t is not None
    if broken == "face azimuths":  # as a different libm's last bits would, only more so
        t = t._replace(face_az=t.face_az + 1e-4)
    else:
        t = t._replace(base_cells=np.roll(t.base_cells, 25))
    assert not cellindex._agrees_with_h3(t)


def test_an_untrusted_kernel_hands_indexing_to_h3ronpy(monkeypatch: pytest.MonkeyPatch) -> None:
    cellindex.warmup()
    rng = np.random.default_rng(3)
    lat, lng = rng.uniform(30.7, 31.9, 1000), rng.uniform(120.8, 122.2, 1000)
    calls: list[int] = []
    real = h3ronpy.vector.coordinates_to_cells

    def spy(la: np.ndarray, ln: np.ndarray, res: int) -> object:
        calls.append(len(la))
        return real(la, ln, res)

    monkeypatch.setattr(h3ronpy.vector, "coordinates_to_cells", spy)
    monkeypatch.setattr(cellindex, "_TRUSTED", False)
    got = cellindex.latlng_to_cells(lat, lng, 10)
    assert calls == [1000]
    assert np.array_equal(got, np.asarray(real(lat, lng, 10)).astype(np.uint64))


def test_tables_kept_for_later_processes_are_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cellindex.warmup()
    t = cellindex._TABLES
    assert t is not None
    path = tmp_path / "tables.npz"
    monkeypatch.setattr(cellindex, "_tables_file", lambda: path)
    assert cellindex._stored_tables() is None  # nothing kept yet
    cellindex._store_tables(t)
    kept = cellindex._stored_tables()
    assert kept is not None
    assert all(np.array_equal(a, b) for a, b in zip(kept, t, strict=True))
    cellindex._store_tables(t._replace(face_az=t.face_az + 1e-4))  # wrong tables on disk
    assert cellindex._stored_tables() is None
    path.write_bytes(b"not an npz file")
    assert cellindex._stored_tables() is None


def test_the_check_is_not_repeated_by_the_build_that_passed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process on the same ahead-of-time build skips the check the build passed on these
    tables; any other build (or numba) checks them again and records its own pass."""
    cellindex.warmup()
    t = cellindex._TABLES
    assert t is not None
    path = tmp_path / "tables.npz"
    monkeypatch.setattr(cellindex, "_tables_file", lambda: path)
    checks: list[int] = []
    real = cellindex._agrees_with_h3

    def counted(tables: cellindex._Tables) -> bool:
        checks.append(1)
        return real(tables)

    monkeypatch.setattr(cellindex, "_agrees_with_h3", counted)
    monkeypatch.setattr(cellindex, "aot_build", lambda: "build-a")
    cellindex._store_tables(t, "build-a")
    assert cellindex._stored_tables() is not None
    assert checks == []
    monkeypatch.setattr(cellindex, "aot_build", lambda: "build-b")
    assert cellindex._stored_tables() is not None
    assert checks == [1]
    assert cellindex._stored_tables() is not None  # build-b's pass was recorded
    assert checks == [1]
    monkeypatch.setattr(cellindex, "aot_build", lambda: None)  # numba: always checked
    assert cellindex._stored_tables() is not None
    assert checks == [1, 1]
    cellindex._store_tables(t._replace(face_az=t.face_az + 1e-4), "build-a")
    assert cellindex._stored_tables() is None  # wrong tables, not passed by this build


def test_the_stored_tables_are_named_by_the_installed_h3_version() -> None:
    import h3

    assert cellindex._h3_version() == h3.__version__
    path = cellindex._tables_file()
    assert path is not None and f"-{h3.__version__}-" in path.name
