"""The wheel is the product: built from the sdist, installed into a fresh virtualenv (with the
locked runtime dependencies and no source tree on the path), then ``heatmap simulate``,
``heatmap ingest`` and ``heatmap serve`` run from an empty folder and the pages' assets, the
places, a tile and the OGC API answer over HTTP.

Needs the package registries (PyPI for the build backend and the locked dependencies, npm for
the front-end assets, both cached by uv and npm after the first run) and takes about a minute,
most of it compiling the numba kernels of the fresh install.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mapbox_vector_tile
import morecantile
import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
TMS = morecantile.tms.get("WebMercatorQuad")
BUND = (31.2398, 121.4871)
HTTP = httpx.Client(timeout=60)

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the project's settings or any path into the source tree."""
    drop = ("HEATMAP_", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "NUMBA_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Built:
    sdist: Path
    wheel: Path
    direct: Path  # the wheel built straight from the source tree


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not UV.exists():
        pytest.fail(f"{UV} missing: uv is a dev dependency (make setup)")
    out = tmp_path_factory.mktemp("dist")
    env = clean_env()
    # uv builds the sdist, then the wheel from the unpacked sdist (npm assets fetched there).
    run([str(UV), "build", "--out-dir", str(out / "from-sdist"), str(ROOT)], ROOT, env)
    run([str(UV), "build", "--wheel", "--out-dir", str(out / "direct"), str(ROOT)], ROOT, env)
    (sdist,) = (out / "from-sdist").glob("heatmap-*.tar.gz")
    (wheel,) = (out / "from-sdist").glob("heatmap-*.whl")
    (direct,) = (out / "direct").glob("heatmap-*.whl")
    return Built(sdist, wheel, direct)


def test_sdist_holds_what_the_wheel_is_built_from(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for need in (
        "pyproject.toml",
        "hatch_build.py",
        "package.json",
        "package-lock.json",
        "requirements.lock",
        "README.md",
        "sample_data/places.json",
        "sample_data/shanghai_outline.geojson",
        "heatmap/web/static/planner.js",
        "heatmap/web/static/widget.js",
        "tiles/vector.py",
    ):
        assert need in names, need
    assert not [n for n in names if n.startswith(("node_modules/", "tests/", ".venv/"))]


def _record(wheel: Path) -> set[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as z:
        (record,) = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
        rows = z.read(record).decode().splitlines()
    return {tuple(r.split(",")[:2]) for r in rows if r and not r.startswith(record)}  # type: ignore[misc]


def test_wheel_holds_assets_and_data(built: Built) -> None:
    names = {path for path, _ in _record(built.wheel)}
    for need in (
        "heatmap/web/vendor/package.json",
        "heatmap/web/vendor/leaflet/leaflet.js",
        "heatmap/web/vendor/leaflet/leaflet.css",
        "heatmap/web/vendor/leaflet/LICENSE",
        "heatmap/web/vendor/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js",
        "heatmap/sample_data/places.json",
        "heatmap/sample_data/shanghai_outline.geojson",
        "heatmap/sample_data/SOURCE.md",
        "heatmap/web/static/planner.js",
        "heatmap/web/static/widget.css",
        "heatmap/web/templates/planner.html",
    ):
        assert need in names, need
    assert not [n for n in names if "__pycache__" in n or n.endswith((".nbi", ".nbc"))]


def test_the_sdist_builds_the_same_wheel(built: Built) -> None:
    # Same files with the same hashes, whether built from the tree or from the sdist.
    assert _record(built.wheel) == _record(built.direct)


@dataclass
class Installed:
    venv: Path
    run_dir: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("fresh")
    venv = base / "venv"
    env = clean_env()
    run([sys.executable, "-m", "venv", str(venv)], base, env)
    py = str(venv / "bin" / "python")
    run(
        [str(UV), "pip", "install", "--python", py, "-q", "-r", str(ROOT / "requirements.lock")],
        base,
        env,
    )
    run([str(UV), "pip", "install", "--python", py, "-q", "--no-deps", str(built.wheel)], base, env)
    run([str(UV), "pip", "check", "--python", py], base, env)  # the lock covers the wheel
    run_dir = base / "empty"
    run_dir.mkdir()
    return Installed(venv, run_dir, env)


def test_installed_package_is_not_the_source_tree(installed: Installed) -> None:
    code = "import heatmap.places as p, heatmap.web.assets as a; print(p.__file__); print(a.ROOTS)"
    out = run([installed.bin("python"), "-c", code], installed.run_dir, installed.env)
    where = out.splitlines()[0]
    assert where.startswith(str(installed.venv)) and str(ROOT) not in out


@dataclass
class Serving:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def serve(inst: Installed, name: str, **settings: str) -> Serving:
    port = free_port()
    env = {**inst.env, "HEATMAP_BASEMAP_URL": "", "HEATMAP_K_MIN": "3", **settings}
    log = inst.run_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [inst.bin("heatmap"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=inst.run_dir,
            env=env,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Serving(url, proc, log)
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"heatmap serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(s: Serving) -> None:
    s.proc.terminate()
    try:
        s.proc.wait(30)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait(10)


@pytest.fixture(scope="module")
def product(installed: Installed) -> Iterator[Serving]:
    """The three commands of a new user, from the empty folder."""
    start = (int(time.time()) - 45 * 60) // 300 * 300
    env = {**installed.env, "HEATMAP_K_MIN": "3"}
    run(
        [installed.bin("heatmap"), "simulate", "--out", "pings.parquet", "--devices", "3000"]
        + ["--hours", "0.5", "--start", str(start), "--seed", "5"],
        installed.run_dir,
        env,
    )
    out = run([installed.bin("heatmap"), "ingest", "pings.parquet"], installed.run_dir, env)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["accepted"] > 10_000 and report["rejected"] == 0 and report["windows_closed"] >= 3
    assert (installed.run_dir / "var" / "heatmap.db").exists()  # the default store, here
    s = serve(installed, "serve")
    yield s
    stop(s)


@pytest.mark.parametrize("page", ["/", "/widget?lang=en"])
def test_pages_and_their_assets(product: Serving, page: str) -> None:
    r = HTTP.get(product.url + page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assets = sorted(set(re.findall(r"/assets/[^\"'?\s]+", r.text)))
    assert any("vendor/leaflet/leaflet.js" in a for a in assets), assets
    assert any("vendor/leaflet/leaflet.css" in a for a in assets), assets
    assert any(a.startswith("/assets/web/") and a.endswith(".js") for a in assets), assets
    for a in assets:
        got = HTTP.get(product.url + a)
        assert got.status_code == 200 and len(got.content) > 100, a


def test_vector_grid_plugin_and_outline(product: Serving) -> None:
    for a in (
        "/assets/vendor/leaflet.vectorgrid/Leaflet.VectorGrid.bundled.min.js",
        "/assets/data/shanghai_outline.geojson",
        "/assets/vendor/leaflet/images/layers.png",
    ):
        assert HTTP.get(product.url + a).status_code == 200, a


def test_places_answer(product: Serving) -> None:
    bundled = json.loads((ROOT / "sample_data" / "places.json").read_text(encoding="utf-8"))
    r = HTTP.get(f"{product.url}/api/v1/places")
    assert r.status_code == 200
    assert {p["id"] for p in r.json()["places"]} == {p["id"] for p in bundled["places"]}
    assert HTTP.get(f"{product.url}/api/v1/places/the-bund").status_code == 200


def test_a_tile_decodes(product: Serving) -> None:
    t = TMS.tile(BUND[1], BUND[0], 9)
    r = HTTP.get(f"{product.url}/tiles/9/{t.x}/{t.y}.mvt")
    assert r.status_code == 200, r.text
    features = mapbox_vector_tile.decode(r.content)["density"]["features"]
    assert features and all(f["properties"]["band"] for f in features)


def test_ogc_api_and_style(product: Serving) -> None:
    assert HTTP.get(f"{product.url}/ogc").json()["links"]
    assert HTTP.get(f"{product.url}/ogc/collections/density-r7/items").status_code == 200
    assert HTTP.get(f"{product.url}/style.json").json()["version"] == 8


def test_a_citys_own_places(product: Serving, installed: Installed, tmp_path: Path) -> None:
    own = tmp_path / "places.json"
    place = {"id": "city-hall", "name_zh": "市政府", "name_en": "City Hall", "kind": "civic"}
    own.write_text(
        json.dumps({"places": [{**place, "lat": 31.2304, "lng": 121.4737, "radius_m": 300}]}),
        encoding="utf-8",
    )
    s = serve(installed, "own", HEATMAP_PLACES_FILE=str(own))
    try:
        ids = [p["id"] for p in HTTP.get(f"{s.url}/api/v1/places").json()["places"]]
        assert ids == ["city-hall"]
    finally:
        stop(s)
