"""Export published (privacy-applied) cells to files planners open in their GIS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import polars_h3 as plh3

from heatmap.errors import BadInput
from heatmap.model import Snapshot, epoch_to_iso

FORMATS = (".csv", ".parquet", ".geojson", ".gpkg")


def snapshots_to_frame(snaps: list[Snapshot]) -> pl.DataFrame:
    """Return the export columns for published cells of several snapshots."""
    frames = []
    for s in snaps:
        names = np.array(s.band_names, dtype=object)
        frames.append(
            pl.DataFrame(
                {
                    "window_start": epoch_to_iso(s.window.start),
                    "window_end": epoch_to_iso(s.window.end),
                    "res": s.res,
                    "cell": pl.Series(s.cells, dtype=pl.UInt64),
                    "people": s.people,
                    "density_km2": np.round(s.density_km2, 3),
                    "band": pl.Series(names[s.band].tolist() if len(s) else [], dtype=pl.String),
                }
            ).with_columns(res=pl.col("res").cast(pl.Int8))
        )
    if not frames:
        raise BadInput("nothing to export")
    df = pl.concat(frames)
    if df.height == 0:
        return df.with_columns(cell=pl.lit(None, pl.String))
    return df.with_columns(cell=plh3.int_to_str("cell"))


def cells_to_polygons(cells: pl.Series) -> np.ndarray:
    """Return shapely hexagons (lng/lat, WGS-84) for H3 cells, vectorised."""
    import shapely

    rings = pl.select(plh3.cell_to_boundary(cells)).to_series().to_list()
    # Pad pentagons to six vertices by repeating their last one so all rings stack into one array.
    padded = np.array([r + [r[-1]] * (6 - len(r)) for r in rings], dtype=np.float64).reshape(
        -1, 6, 2
    )
    return np.asarray(shapely.polygons(padded[:, :, ::-1]), dtype=object)


def check_format(out: Path) -> None:
    """Raise ``BadInput`` unless the output suffix is a known export format."""
    if out.suffix.lower() not in FORMATS:
        raise BadInput(f"--out {out.name}: unknown format, use one of {', '.join(FORMATS)}")


def write_cells(df: pl.DataFrame, out: Path) -> int:
    """Write the export frame to CSV, Parquet, GeoJSON or GeoPackage (by suffix)."""
    check_format(out)
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        df.write_csv(out)
    elif suffix == ".parquet":
        df.write_parquet(out)
    else:
        import geopandas as gpd

        geom = cells_to_polygons(df["cell"]) if df.height else np.zeros(0, dtype=object)
        gdf = gpd.GeoDataFrame(df.to_pandas(), geometry=list(geom), crs="EPSG:4326")
        if suffix == ".geojson":
            gdf.to_file(out, driver="GeoJSON")
        else:
            gdf.to_file(out, driver="GPKG", layer="density")
    return df.height
