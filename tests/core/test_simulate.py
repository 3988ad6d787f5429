"""The synthetic city: determinism, schema, time range, geography, rhythm and file round trips."""

from __future__ import annotations

import gzip
import re
from datetime import UTC, datetime, timedelta, timezone

import h3
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import shapely

from heatmap.errors import BadInput
from heatmap.places import load_outline, load_places, place_cells
from heatmap.simulate import PING_SCHEMA, make_population, simulate_pings, write_pings

TUESDAY = datetime(2026, 11, 24, tzinfo=UTC)  # a Tuesday; 00:00 UTC is 08:00 in Shanghai
SATURDAY = datetime(2026, 11, 28, tzinfo=UTC)
HOTSPOTS = ("the-bund", "nanjing-road", "yu-garden", "xintiandi", "oriental-pearl-tower")


def local(day: datetime, hour: float) -> datetime:
    """Return the UTC instant of a Shanghai local hour on ``day``."""
    return day + timedelta(hours=hour - 8)


def run(**kw) -> pa.Table:
    kw.setdefault("interval_s", 30)
    return pa.concat_tables(list(simulate_pings(**kw)))


def index(table: pa.Table) -> np.ndarray:
    """Return the integer device index of each row (``d000123`` -> 123)."""
    ids = table["device_id"].to_numpy(zero_copy_only=False).astype("U")
    return np.char.lstrip(ids, "d").astype(np.int64)


def latest_per_device(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dev = index(table)
    ts = table["ts"].to_numpy()
    order = np.lexsort((ts, dev))
    last = np.r_[dev[order][1:] != dev[order][:-1], True]
    pick = order[last]
    return dev[pick], table["lat"].to_numpy()[pick], table["lng"].to_numpy()[pick]


def metres(lat1, lng1, lat2, lng2):
    return np.hypot((lat2 - lat1) * 110_860.0, (lng2 - lng1) * 95_240.0)


@pytest.fixture(scope="module")
def hotspot_cells() -> set[int]:
    places = {p.id: p for p in load_places()}
    return {int(c) for pid in HOTSPOTS for c in place_cells(places[pid], 10)}


def devices_in(table: pa.Table, cells: set[int]) -> int:
    """Count distinct devices whose latest ping is in ``cells``, with plain h3-py."""
    _, lat, lng = latest_per_device(table)
    found = [
        h3.str_to_int(h3.latlng_to_cell(a, b, 10)) in cells for a, b in zip(lat, lng, strict=True)
    ]
    return int(sum(found))


def test_same_seed_same_chunks_byte_for_byte():
    kw = {"devices": 3000, "start": local(TUESDAY, 8.5), "hours": 0.5, "seed": 7}
    a = list(simulate_pings(**kw))
    b = list(simulate_pings(**kw))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.equals(y)
        for cx, cy in zip(x.columns, y.columns, strict=True):
            for bx, by in zip(cx.chunks[0].buffers(), cy.chunks[0].buffers(), strict=True):
                assert (bx is None and by is None) or bx.to_pybytes() == by.to_pybytes()
    c = run(devices=3000, start=local(TUESDAY, 8.5), hours=0.5, seed=8)
    assert not pa.concat_tables(a).equals(c)


def test_columns_and_types():
    t = run(devices=500, start=local(TUESDAY, 12), hours=0.25)
    assert t.schema == PING_SCHEMA
    ids = t["device_id"].to_numpy(zero_copy_only=False)
    assert all(re.fullmatch(r"d\d{6}", s) for s in ids[:1000])
    assert set(np.unique(index(t))) <= set(range(500))
    assert t["lat"].null_count == t["lng"].null_count == t["ts"].null_count == 0


def test_chunks_are_bounded_and_streamed():
    chunks = simulate_pings(devices=20_000, start=local(TUESDAY, 9), hours=1, interval_s=30)
    sizes = [c.num_rows for c in chunks]
    assert len(sizes) > 1
    assert max(sizes) <= 2_000_000
    assert sum(sizes) == pytest.approx(20_000 * 120 * 0.9, rel=0.15)


def test_ts_within_start_and_end():
    start = datetime(2026, 11, 24, 3, 0, 0, 250_000, tzinfo=UTC)
    t = run(devices=1000, start=start, hours=0.3)
    ts = t["ts"].to_numpy()
    lo = int(start.timestamp()) + 1  # a fraction of a second rounds up
    assert ts.min() >= lo
    assert ts.max() < start.timestamp() + 0.3 * 3600
    assert ts.max() >= lo + 0.3 * 3600 - 60


def test_start_in_another_time_zone_is_the_same_instant():
    shanghai = timezone(timedelta(hours=8))
    a = run(devices=300, start=datetime(2026, 11, 24, 9, tzinfo=shanghai), hours=0.1)
    b = run(devices=300, start=local(TUESDAY, 9), hours=0.1)
    assert a.equals(b)


def test_every_ping_is_inside_the_outline():
    outline = load_outline()
    tolerant = shapely.buffer(outline, 0.003)  # ~300 m for GPS jitter at the coast
    t = run(devices=4000, start=local(TUESDAY, 7), hours=2.5, interval_s=120)
    lat, lng = t["lat"].to_numpy(), t["lng"].to_numpy()
    assert shapely.contains_xy(tolerant, lng, lat).all()
    # Nearly all are strictly inside; only jitter right at the shore may step out.
    assert shapely.contains_xy(outline, lng, lat).mean() > 0.999


def test_every_home_is_inside_the_outline_and_denser_in_the_centre():
    pop = make_population(20_000, seed=3)
    outline = load_outline()
    assert shapely.contains_xy(outline, pop.home_lng, pop.home_lat).all()
    d = metres(pop.home_lat, pop.home_lng, 31.2300, 121.4700)  # from People's Square
    central = (d < 10_000).mean()  # ~4% of the area holds far more than 4% of homes
    assert 0.15 < central < 0.6


def test_ping_intervals():
    step = 60
    t = run(devices=2000, start=local(TUESDAY, 10), hours=1.5, interval_s=step)
    dev = index(t)
    ts = t["ts"].to_numpy()
    order = np.lexsort((ts, dev))
    dev, ts = dev[order], ts[order]
    same = dev[1:] == dev[:-1]
    gaps = np.diff(ts)[same]
    # Gaps are uniform in [0.5, 1.5] intervals (ts are whole seconds), except over an off period.
    assert gaps.min() >= 0.5 * step - 1
    regular = gaps[gaps <= 1.5 * step + 1]
    assert regular.size / gaps.size > 0.98
    assert regular.mean() == pytest.approx(step, rel=0.03)
    assert regular.std() == pytest.approx(step / np.sqrt(12), rel=0.1)
    # Devices are not in step: first pings spread over the whole first interval.
    first = ts[np.r_[True, ~same]] - ts.min()
    assert np.histogram(first % step, bins=6, range=(0, step))[0].min() > 150


def test_some_devices_are_off_part_of_the_time():
    t = run(devices=3000, start=local(TUESDAY, 0), hours=8, interval_s=300)
    seen_night = set(index(t.filter(pa.compute.less(t["ts"], int(local(TUESDAY, 4).timestamp())))))
    seen = set(index(t))
    assert len(seen) > 0.97 * 3000
    assert 0.6 * 3000 < len(seen_night) < 0.9 * 3000


def test_at_3am_most_devices_are_near_home():
    pop = make_population(3000, seed=5)
    t = run(devices=3000, start=local(TUESDAY, 3), hours=0.2, seed=5)
    dev, lat, lng = latest_per_device(t)
    d = metres(lat, lng, pop.home_lat[dev], pop.home_lng[dev])
    assert (d < 150).mean() > 0.97


def test_morning_commuters_are_on_the_way():
    pop = make_population(4000, seed=2)
    t = run(devices=4000, start=local(TUESDAY, 8.25), hours=0.1, seed=2)
    dev, lat, lng = latest_per_device(t)
    from_home = metres(lat, lng, pop.home_lat[dev], pop.home_lng[dev])
    from_work = metres(lat, lng, pop.work_lat[dev], pop.work_lng[dev])
    travelling = (from_home > 500) & (from_work > 500)
    assert 0.05 < travelling.mean() < 0.6


def test_hotspots_fill_up_in_the_evening(hotspot_cells):
    night = run(devices=6000, start=local(TUESDAY, 3), hours=0.1, seed=1)
    evening = run(devices=6000, start=local(TUESDAY, 19), hours=0.1, seed=1)
    n_night = devices_in(night, hotspot_cells)
    n_evening = devices_in(evening, hotspot_cells)
    assert n_evening > 4 * max(n_night, 10)


def test_business_districts_are_busier_on_a_weekday_morning():
    places = {p.id: p for p in load_places()}
    cells = {
        int(c)
        for pid in ("lujiazui", "zhangjiang", "hongqiao-cbd")
        for c in place_cells(places[pid], 10)
    }
    weekday = run(devices=6000, start=local(TUESDAY, 10.5), hours=0.1, seed=4)
    weekend = run(devices=6000, start=local(SATURDAY, 10.5), hours=0.1, seed=4)
    assert devices_in(weekday, cells) > 2 * devices_in(weekend, cells)


def test_the_bund_passes_k_anonymity_at_res10_in_the_evening():
    places = {p.id: p for p in load_places()}
    bund = {int(c) for c in place_cells(places["the-bund"], 10)}
    t = run(devices=50_000, start=local(TUESDAY, 19.5), hours=5 / 60, seed=0)
    _, lat, lng = latest_per_device(t)
    cells = [h3.str_to_int(h3.latlng_to_cell(a, b, 10)) for a, b in zip(lat, lng, strict=True)]
    cells_arr = np.array(cells, dtype=np.uint64)
    in_bund = np.isin(cells_arr, np.array(sorted(bund), dtype=np.uint64))
    _, counts = np.unique(cells_arr[in_bund], return_counts=True)
    assert (counts >= 10).sum() >= 5


def test_a_run_across_local_midnight_is_continuous():
    t = run(devices=1000, start=local(TUESDAY, 23.75), hours=0.5, interval_s=60)
    ts = t["ts"].to_numpy()
    per_minute = np.bincount((ts - ts.min()) // 60)
    assert per_minute[:29].min() > 0.7 * per_minute[:29].mean()


@pytest.mark.parametrize(
    "kw",
    [
        {"devices": 0},
        {"devices": 10, "hours": 0},
        {"devices": 10, "hours": float("nan")},
        {"devices": 10, "interval_s": 0},
        {"devices": 10, "city": "beijing"},
        {"devices": 10, "start": datetime(2026, 11, 24, 9)},
    ],
)
def test_bad_arguments_are_bad_input(kw):
    args = {"start": TUESDAY, "hours": 1.0, **kw}
    with pytest.raises(BadInput):
        simulate_pings(**args)


@pytest.mark.parametrize("name", ["pings.csv", "pings.csv.gz", "pings.parquet"])
def test_write_and_read_back(tmp_path, name):
    kw = {"devices": 800, "start": local(TUESDAY, 18), "hours": 0.5, "seed": 9}
    expect = run(**kw)
    path = tmp_path / name
    rows = write_pings(path, simulate_pings(interval_s=30, **kw))
    assert rows == expect.num_rows
    if name.endswith(".parquet"):
        back = pq.read_table(path)
    else:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                assert fh.readline() == b"device_id,ts,lat,lng\n"
        opts = pacsv.ConvertOptions(column_types=PING_SCHEMA)
        back = pacsv.read_csv(path, convert_options=opts)
    assert back.schema == PING_SCHEMA
    assert back.equals(expect)


def test_write_with_no_rows_still_writes_a_header(tmp_path):
    path = tmp_path / "empty.csv"
    assert write_pings(path, iter(())) == 0
    assert path.read_text() == "device_id,ts,lat,lng\n"


def test_write_passes_on_an_error_of_the_chunks(tmp_path):
    def chunks():
        yield from simulate_pings(devices=100, start=TUESDAY, hours=0.1)
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError, match="generator broke"):
        write_pings(tmp_path / "p.parquet", chunks())


def test_write_rejects_an_unknown_suffix(tmp_path):
    with pytest.raises(BadInput, match="unknown output format"):
        write_pings(tmp_path / "pings.json", iter(()))
