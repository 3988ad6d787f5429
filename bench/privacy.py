"""Privacy: what each publication rule withholds, leaks and distorts, beside 0.3.0 (issue 14).

On (a) the real GeoLife pings (179 people in Beijing over five years; skipped, with the reason,
where ``../shared/data`` is absent) and (b) a simulated Shanghai hour (60,000 devices), every
closed window and every release (a tick every ``release_s``, each device at its latest ping in
the trailing ``horizon``) is published under

1. **0.3.0's suppression** (the peer): :func:`suppress_030` below, the pairwise rule of 0.3.0
   (one finer resolution at a time), kept verbatim as the reference;
2. **the atom rule** (today): ``heatmap.publish.counts_to_published`` with DP off, which applies
   ``heatmap.privacy.suppress`` (every atom 0 or >= k);
3. **DP with OpenDP** at two epsilons: ``counts_to_published`` with ``dp_epsilon`` set
   (discrete Laplace noise on every cell, publication decided on the noisy counts),

at the default ``k_min`` (10) and smaller ones, for resolutions 5-10, and reports per rule:
the share of cells with >= k devices that are withheld (all resolutions, and the base
resolution); atoms in 1..k-1 (a published cell minus its maximal published descendants: a
number derivable by differencing that describes fewer than k devices, i.e. a leak); the error
of the published people vs the exact count, and of the **public view** (people rounded to
multiples of ``k_min * expansion``, as ``heatmap.publish.round_for_public`` does) vs exact;
and the time of each publication (roll-up included, as in the service).

All windows (or all releases) of a data set go through one call, as an ingest closes them;
the time per publication is that call's time over the number of publications.

Run: ``.venv/bin/python bench/privacy.py [--no-releases] [--devices 60000] [--repeat 3]``.
Prints the tables (0.3.0 first) and writes bench/out/privacy.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.aggregate import (
    cells_to_counts,
    parent_index,
    pings_to_positions,
    rollup,
    strictly_sorted,
)
from heatmap.config import Settings
from heatmap.dp import DEFAULT_DELTA, publish_threshold
from heatmap.model import Published, Window
from heatmap.policy import PublishPolicy
from heatmap.publish import counts_to_published, published_to_snapshots, round_for_public

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
GEOLIFE = ROOT.parent / "shared" / "data" / "geolife-beijing" / "pings.csv.gz"


# --------------------------------------------------------------------------------------------
# The peer: 0.3.0's suppression (git show 42afbbb:heatmap/privacy.py, function ``suppress``),
# copied unchanged apart from its name. It checks rule 3 one finer resolution at a time and
# so misses mixed-resolution differences such as P - A - b1 (issue 14, item 1).
# --------------------------------------------------------------------------------------------


def suppress_030(counts: pl.DataFrame, k_min: int) -> pl.Series:
    """0.3.0 reference: which rows of rolled-up counts may be published (pairwise rule 3).

    Start from ``devices >= k_min``. Resolutions are settled coarse to fine; at a finer
    resolution ``s`` and for each coarser ``r`` (nearest first), a published parent ``P`` whose
    remainder ``P - sum(published cells of s inside P)`` is in ``1..k_min-1`` withholds its
    smallest published cell at ``s``.
    """
    res_all = counts["res"].to_numpy()
    w_all = counts["w"].to_numpy().astype(np.int64, copy=False)
    cell_all = counts["cell"].to_numpy().astype(np.uint64, copy=False)
    dev_all = counts["devices"].to_numpy().astype(np.int64, copy=False)
    order = None
    if not strictly_sorted(res_all, w_all, cell_all):  # rollup's output is sorted already
        order = np.lexsort((cell_all, w_all, res_all))
        res_all, w_all, cell_all, dev_all = (
            res_all[order],
            w_all[order],
            cell_all[order],
            dev_all[order],
        )
    pub_all = dev_all >= k_min
    levels = sorted(int(r) for r in np.unique(res_all))
    bounds = np.searchsorted(res_all, levels + [levels[-1] + 1] if levels else [])
    up: list[npt.NDArray[np.intp]] = []
    for i in range(len(levels)):
        a, b = int(bounds[i]), int(bounds[i + 1])
        w_s, cell_s, dev_s, pub_s = w_all[a:b], cell_all[a:b], dev_all[a:b], pub_all[a:b]
        up.append(parent_index(w_s, cell_s, levels[i - 1]) if i else np.zeros(0, np.intp))
        weights = np.where(pub_s, dev_s, 0)
        pidx = np.arange(b - a)
        for j in range(i - 1, -1, -1):  # coarser levels, nearest first
            pidx = up[j + 1][pidx]
            ra, rb = int(bounds[j]), int(bounds[j + 1])
            covered = np.bincount(pidx, weights=weights, minlength=rb - ra)
            remainder = dev_all[ra:rb] - covered.astype(np.int64)
            bad = pub_all[ra:rb] & (remainder > 0) & (remainder < k_min)
            if not bad.any():
                continue
            cand = np.flatnonzero(pub_s & bad[pidx])
            cand = cand[np.lexsort((cell_s[cand], dev_s[cand], pidx[cand]))]
            first = np.ones(len(cand), dtype=bool)
            first[1:] = pidx[cand][1:] != pidx[cand][:-1]
            pub_s[cand[first]] = False  # a view into pub_all
            weights = np.where(pub_s, dev_s, 0)
    if order is None:
        return pl.Series("published", pub_all)
    published = np.empty(len(order), dtype=bool)
    published[order] = pub_all
    return pl.Series("published", published)


def publish_030(counts: pl.DataFrame, policy: PublishPolicy) -> pl.DataFrame:
    """0.3.0's ``counts_to_published`` with DP off: roll up, :func:`suppress_030`, expand."""
    rolled = rollup(counts, policy.base_res, policy.min_res)
    pub = rolled.filter(suppress_030(rolled, policy.k_min))
    people = pub["devices"].to_numpy().astype(np.float64)
    return pub.select("w", "res", "cell").with_columns(people=pl.Series(people * policy.expansion))


# --------------------------------------------------------------------------------------------
# Data: counts per closed window and per release
# --------------------------------------------------------------------------------------------


def load_geolife() -> pl.DataFrame:
    """Read the GeoLife pings (``device_id`` as a string: the leading zeros matter)."""
    pings = pl.read_csv(GEOLIFE, schema_overrides={"device_id": pl.String})
    return pings.with_columns(pl.col("device_id").cast(pl.Categorical))


def simulate_city(devices: int, hours: float) -> tuple[pl.DataFrame, int, int]:
    """Return simulated Shanghai pings (as tests/core/test_privacy.py builds its half hour)."""
    from heatmap.simulate import simulate_pings

    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # 18:00 in Shanghai, a Tuesday
    tables = simulate_pings(devices=devices, start=start, hours=hours, interval_s=60, seed=5)
    pings = pl.concat([pl.DataFrame(pl.from_arrow(t)) for t in tables])
    t0 = int(start.timestamp())
    return pings.with_columns(pl.col("device_id").cast(pl.Categorical)), t0, t0 + int(hours * 3600)


def window_counts(pings: pl.DataFrame, policy: PublishPolicy) -> pl.DataFrame:
    """Return ``w, cell, devices`` of every window (each device at its latest ping)."""
    pos = pings_to_positions(pings, policy.window_s, policy.base_res)
    return cells_to_counts(pos.select("w", "cell"))


def release_counts(
    pings: pl.DataFrame, policy: PublishPolicy, span: tuple[int, int] | None
) -> pl.DataFrame:
    """Return ``w, cell, devices`` of every release, ``w`` numbering the releases.

    A release at tick ``t`` (a multiple of ``release_s``) counts each device at its latest ping
    in ``[t - horizon, t)``. The ticks ``t = o (mod horizon)`` are the windows of the pings
    shifted by ``o``, so each offset is one windowing pass. With ``span``, only releases whose
    horizon lies inside it (no half-filled release at either end).
    """
    h, step = policy.horizon_s, policy.release_s
    parts = []
    for i, o in enumerate(range(0, h, step)):
        pos = pings_to_positions(pings.with_columns(pl.col("ts") - o), h, policy.base_res)
        if span is not None:
            lo = pl.col("w") * h + o
            pos = pos.filter((lo >= span[0]) & (lo + h <= span[1]))
        parts.append(pos.select(w=pl.col("w") * (h // step) + i, cell="cell"))
    return cells_to_counts(pl.concat(parts))


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------


def leaking_atoms(pub: pl.DataFrame, k: int) -> tuple[int, int]:
    """Return (atoms in ``1..k-1``, atoms < 0) of published exact counts, every window.

    ``atom(X) = X - sum(maximal published cells strictly inside X)``: each published cell is
    subtracted from its nearest published ancestor. Vectorised: a res-``r`` cell of window
    ``w`` is packed into one 64-bit key (window above the base cell and ``r`` digits), its
    ancestors' keys are shifts of it, looked up with ``searchsorted`` per resolution.
    """
    w = pub["w"].to_numpy().astype(np.int64)
    res = pub["res"].to_numpy().astype(np.int64)
    cell = pub["cell"].to_numpy().astype(np.uint64)
    val = pub["devices"].to_numpy().astype(np.int64)
    if not len(w):
        return 0, 0
    levels = sorted(int(r) for r in np.unique(res))
    w = w - w.min()
    assert int(w.max()) < 1 << (64 - 7 - 3 * levels[-1]), "window range too wide to pack"
    codes, keys, vals, cover = {}, {}, {}, {}
    for r in levels:
        sel = res == r
        code = (cell[sel] >> np.uint64(45 - 3 * r)) & np.uint64((1 << (7 + 3 * r)) - 1)
        key = (w[sel].astype(np.uint64) << np.uint64(7 + 3 * r)) | code
        o = np.argsort(key)
        codes[r], keys[r], vals[r] = (w[sel][o], code[o]), key[o], val[sel][o]
        cover[r] = np.zeros(len(o), np.int64)
    for r in levels:
        wr, code = codes[r]
        pending = np.arange(len(code))
        for s in [x for x in reversed(levels) if x < r]:  # nearest coarser first
            anc = code[pending] >> np.uint64(3 * (r - s))
            key = (wr[pending].astype(np.uint64) << np.uint64(7 + 3 * s)) | anc
            pos = np.searchsorted(keys[s], key)
            pos_c = np.minimum(pos, len(keys[s]) - 1)
            hit = (pos < len(keys[s])) & (keys[s][pos_c] == key)
            np.add.at(cover[s], pos_c[hit], vals[r][pending[hit]])
            pending = pending[~hit]
            if not pending.size:
                break
    atoms = np.concatenate([vals[r] - cover[r] for r in levels])
    return int(((atoms > 0) & (atoms < k)).sum()), int((atoms < 0).sum())


def public_people(people: npt.NDArray[np.float64], step: float) -> npt.NDArray[np.float64]:
    """The public view's people: ``heatmap.publish.round_for_public``'s rounding, on arrays."""
    return np.maximum(np.round(people / step), 1.0) * step


def check_public_rounding(pub: pl.DataFrame, policy: PublishPolicy) -> None:
    """Assert :func:`public_people` equals ``round_for_public`` on one publication's snapshots."""
    w0 = int(pub["w"].to_numpy().min())
    part = pub.filter(pl.col("w") == w0).select("res", "cell", "people").sort("res", "cell")
    window = Window(w0 * policy.window_s, (w0 + 1) * policy.window_s)
    snaps = published_to_snapshots(Published(window, part), policy, "bench", True)
    step = policy.k_min * policy.expansion
    for snap in snaps.values():
        assert np.array_equal(round_for_public(snap, step).people, public_people(snap.people, step))


@dataclass
class Row:
    k: int
    rule: str
    cells: int
    eligible: int
    eligible_base: int
    withheld: int
    withheld_base: int
    published: int
    below_k: int
    leaks: int | None
    negative_atoms: int | None
    mae: float
    rel: float
    pub_mae: float
    pub_rel: float
    seconds: float
    n: int


def evaluate(
    rule: str, rolled: pl.DataFrame, pub: pl.DataFrame, k: int, policy: PublishPolicy,
    seconds: float, n: int, atoms: bool,
) -> Row:  # fmt: skip
    """Compare one publication (``w, res, cell, people``) with the exact roll-up."""
    j = rolled.join(pub, on=["w", "res", "cell"], how="left")
    dev = j["devices"].to_numpy()
    people = j["people"].to_numpy()
    on = ~np.isnan(people) if people.dtype.kind == "f" else j["people"].is_not_null().to_numpy()
    base = j["res"].to_numpy() == policy.base_res
    eligible = dev >= k
    exact = dev[on].astype(np.float64) * policy.expansion
    got = people[on].astype(np.float64)
    public = public_people(got, k * policy.expansion)
    leaks = neg = None
    if atoms:
        leaks, neg = leaking_atoms(j.filter(pl.Series(on)).select("w", "res", "cell", "devices"), k)
    err, perr = np.abs(got - exact), np.abs(public - exact)
    return Row(
        k=k,
        rule=rule,
        cells=len(dev),
        eligible=int(eligible.sum()),
        eligible_base=int((eligible & base).sum()),
        withheld=int((eligible & ~on).sum()),
        withheld_base=int((eligible & base & ~on).sum()),
        published=int(on.sum()),
        below_k=int((on & ~eligible).sum()),
        leaks=leaks,
        negative_atoms=neg,
        mae=float(err.mean()) if len(err) else float("nan"),
        rel=float(np.median(err / exact)) if len(err) else float("nan"),
        pub_mae=float(perr.mean()) if len(perr) else float("nan"),
        pub_rel=float(np.median(perr / exact)) if len(perr) else float("nan"),
        seconds=seconds,
        n=n,
    )


def timed(fn: Callable[[], pl.DataFrame]) -> tuple[pl.DataFrame, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(
    counts: pl.DataFrame,
    policy: PublishPolicy,
    ks: list[int],
    epsilons: list[float],
    repeat: int,
) -> list[Row]:
    """Publish ``counts`` (one publication per ``w``) under every rule and k; return the rows.

    The two suppressions are cheap: ``repeat`` interleaved runs each, median time (the
    machine's speed drifts). DP draws OpenDP noise for millions of cells: one run.
    """
    rolled = rollup(counts, policy.base_res, policy.min_res)
    n = counts["w"].n_unique()
    rows: list[Row] = []
    for k in ks:
        pol = dataclasses.replace(policy, k_min=k, dp_epsilon=None)
        runs: dict[str, list[tuple[pl.DataFrame, float]]] = {"old": [], "now": []}
        for _ in range(repeat):
            runs["old"].append(timed(partial(publish_030, counts, pol)))
            runs["now"].append(timed(partial(counts_to_published, counts, pol)))
        old, now = runs["old"][-1][0], runs["now"][-1][0]
        dt_old = float(np.median([t for _, t in runs["old"]]))
        dt_now = float(np.median([t for _, t in runs["now"]]))
        rows.append(evaluate("0.3.0 pairwise (peer)", rolled, old, k, pol, dt_old, n, True))
        rows.append(evaluate("atom rule", rolled, now, k, pol, dt_now, n, True))
        if k == ks[0]:
            check_public_rounding(now, pol)
    # DP: the noise does not depend on k, only the threshold does (k + a margin that depends on
    # epsilon and the resolutions): one call at the smallest k, then each larger k keeps the
    # cells whose noisy count clears its own threshold. Same draws, same time for every k.
    n_res = len(policy.resolutions)
    for eps in epsilons:
        pol = dataclasses.replace(policy, k_min=min(ks), dp_epsilon=eps)
        pub, dt = timed(partial(counts_to_published, counts, pol))
        for k in ks:
            thr = publish_threshold(k, eps, n_res)
            part = pub.filter(pl.col("people") >= thr * policy.expansion - 1e-9)
            rule = f"DP eps {eps:g} (shown from {thr})"
            pk = dataclasses.replace(pol, k_min=k)
            rows.append(evaluate(rule, rolled, part, k, pk, dt, n, False))
    order = {k: i for i, k in enumerate(ks)}
    return sorted(rows, key=lambda r: order[r.k])  # stable: 0.3.0, atom rule, DP per k


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}%" if b else "-"


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "-" if a == 0 else "inf"
    return f"{a / b:.2f}"


def _rel(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.1f}%"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} µs"


def _num(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.2f}"


def table(rows: list[Row], base_res: int) -> list[str]:
    """Markdown table: per k, 0.3.0 first, ratios to it."""
    head = (
        f"| k | rule | withheld (all res) | withheld (res {base_res}) | x 0.3.0 (res {base_res}) "
        "| atoms 1..k-1 | MAE | median rel. err | public MAE | public median rel. err "
        "| per publication | x 0.3.0 time |"
    )
    out = [head, "|" + "---|" * 12]
    peer: dict[int, Row] = {r.k: r for r in rows if r.rule.startswith("0.3.0")}
    for r in rows:
        p = peer[r.k]
        per = r.seconds / max(r.n, 1)
        out.append(
            f"| {r.k} | {r.rule} | {_pct(r.withheld, r.eligible)} "
            f"| {_pct(r.withheld_base, r.eligible_base)} "
            f"| {_ratio(r.withheld_base, p.withheld_base)} "
            f"| {'n/a (noised)' if r.leaks is None else f'{r.leaks:,}'} "
            f"| {_num(r.mae)} | {_rel(r.rel)} | {_num(r.pub_mae)} | {_rel(r.pub_rel)} "
            f"| {_ms(per)} | {_ratio(r.seconds, p.seconds)} |"
        )
    return out


def eligible_line(rows: list[Row], base_res: int) -> str:
    parts = []
    for r in rows:
        if r.rule.startswith("0.3.0"):
            parts.append(
                f"k={r.k}: {r.eligible:,} cells reach k ({r.eligible_base:,} at res {base_res})"
            )
    return "Cells with >= k devices (the denominator of the shares): " + "; ".join(parts) + "."


def section(
    title: str, rows: list[Row], policy: PublishPolicy, extra: str, repeat: int
) -> list[str]:
    n = rows[0].n
    lines = [f"## {title}", "", extra, "", eligible_line(rows, policy.base_res), ""]
    lines += table(rows, policy.base_res)
    k0 = rows[0].k
    below = [
        f"{r.rule.split(' (')[0]}: {r.below_k:,} of {r.cells - r.eligible:,}"
        for r in rows
        if r.k == k0 and r.rule.startswith("DP")
    ]
    neg = [r.negative_atoms for r in rows if r.negative_atoms]
    lines += [
        "",
        f"{n:,} publications in one call per rule; the time is the call's over {n:,} "
        f"(suppressions: median of {repeat} interleaved calls; DP: one call per epsilon, shared by "
        "every k, which only moves the threshold). "
        f"Cells with fewer than k={k0} exact devices that DP published anyway (the noisy "
        f"threshold allows it with probability <= {DEFAULT_DELTA:g} per cell): "
        + "; ".join(below)
        + (f". Negative atoms (a bug): {neg}" if neg else "")
        + ".",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=60_000)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--no-releases", action="store_true", help="closed windows only")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of the suppressions")
    args = ap.parse_args()
    t_start = time.perf_counter()
    policy = PublishPolicy.from_settings(Settings(basemap_url=""))
    pol_text = (
        f"Policy: k_min {policy.k_min} (default) and below, resolutions "
        f"{policy.min_res}-{policy.base_res}, windows of {policy.window_s} s, releases every "
        f"{policy.release_s} s over the trailing {policy.horizon_s} s, expansion "
        f"{policy.expansion:g} (people = devices); public view rounds people to multiples of "
        "k * expansion (at least one multiple)."
    )
    lines = [
        f"# Privacy: withheld cells, leaks and error, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        pol_text,
        "",
        "Rules: **0.3.0 pairwise** (peer: 0.3.0's suppression, rule 3 checked one finer "
        "resolution at a time), **atom rule** (today's `counts_to_published`, DP off: every "
        "atom 0 or >= k), **DP eps** (today's `counts_to_published` with `dp_epsilon`: OpenDP "
        "discrete Laplace on every cell, scale 6/eps, a cell shown from the noisy threshold in "
        "brackets). *Withheld*: cells with >= k exact devices that are not published. "
        "*Atoms 1..k-1*: published cell minus its maximal published descendants, in 1..k-1 "
        "devices: a count of fewer than k devices derivable by differencing (a leak; with DP "
        "every difference is noised, so not counted). *MAE* and *median rel. err*: published "
        "people vs exact, over published cells, all resolutions (0 without DP); *public*: the "
        "same for the public view (rounded to multiples of k * expansion). *x 0.3.0*: ratio "
        "to the peer row of the same k (withheld base cells; time).",
        "",
    ]

    def run(
        name: str, pings: pl.DataFrame, ks: list[int], span: tuple[int, int] | None, note: str
    ) -> None:
        kinds: list[tuple[str, Callable[[], pl.DataFrame]]] = [
            ("closed windows", lambda: window_counts(pings, policy))
        ]
        if not args.no_releases:
            kinds.append(("releases", lambda: release_counts(pings, policy, span)))
        for kind, make in kinds:
            t0 = time.perf_counter()
            counts = make()
            prep = time.perf_counter() - t0
            n = counts["w"].n_unique()
            rows = measure(counts, policy, ks, args.epsilons, args.repeat)
            extra = (
                f"{note} {n:,} {kind} ({counts.height:,} (publication, base cell) counts; "
                f"built in {prep:.1f} s, not timed below)."
            )
            sec = section(f"{name}, {kind}", rows, policy, extra, args.repeat)
            print("\n".join(sec), flush=True)
            lines.extend(sec)

    if GEOLIFE.exists():
        t0 = time.perf_counter()
        g = load_geolife()
        note = (
            f"GeoLife 1.3 ({g.height:,} pings, {g['device_id'].n_unique()} people, 2007-2012; "
            f"read in {time.perf_counter() - t0:.1f} s). No base cell of any window reaches "
            "k = 10, so k = 2 is measured too."
        )
        run("GeoLife (real, Beijing)", g, [policy.k_min, 5, 2], None, note)
        del g
    else:
        msg = f"GeoLife skipped: {GEOLIFE} is not present (in CI it is; elsewhere maybe not)."
        print(msg)
        lines += ["## GeoLife (real, Beijing)", "", msg, ""]
    t0 = time.perf_counter()
    sim, start, end = simulate_city(args.devices, args.hours)
    note = (
        f"Simulated Shanghai ({args.devices:,} devices, {args.hours:g} h from 18:00 local, a ping "
        f"every ~60 s: {sim.height:,} pings, made in {time.perf_counter() - t0:.1f} s); "
        "releases only where their horizon lies inside the hour."
    )
    run("Simulated Shanghai", sim, [policy.k_min, 5], (start, end), note)
    wall = time.perf_counter() - t_start
    lines += [f"Wall time of the whole bench: {wall:.0f} s (2 shared cores).", ""]
    OUT.mkdir(exist_ok=True)
    (OUT / "privacy.md").write_text("\n".join(lines))
    print(f"wall {wall:.0f} s; wrote {OUT / 'privacy.md'}")


if __name__ == "__main__":
    main()
