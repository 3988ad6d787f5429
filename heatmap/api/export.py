"""Planners' exports: ``GET /api/v1/export/cells.{csv,parquet,geojson,gpkg}`` (exact values).

The same columns and files as ``heatmap export cells``, for one release or closed window and
one resolution, to planners only (a token of ``HEATMAP_PLANNER_TOKENS``): exports carry the
exact published values, so the public view (rounded) is not offered here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api.dependencies import WindowParam, audience
from heatmap.errors import Unauthorized
from heatmap.export import snapshots_to_frame, write_cells
from heatmap.read import Reader, Ref

router = APIRouter(prefix="/api/v1/export", tags=["export"])

MEDIA = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "geojson": "application/geo+json",
    "gpkg": "application/geopackage+sqlite3",
}
Fmt = Literal["csv", "parquet", "geojson", "gpkg"]


def export_cells(reader: Reader, ref: Ref, res: int | None, fmt: str) -> tuple[bytes, str]:
    """Return the export file of one release or closed window and its file name."""
    r = reader.settings.base_res if res is None else reader.check_res(res)
    info = reader.window(ref)
    frame = snapshots_to_frame([reader.snapshots(info)[r]])
    stamp = info.window.end if info.is_release else info.window.start
    name = f"heatmap-cells-res{r}-{stamp}.{fmt}"
    with tempfile.TemporaryDirectory() as tmp:
        path = FilePath(tmp) / name
        write_cells(frame, path)
        return path.read_bytes(), name


@router.get(
    "/cells.{fmt}",
    summary="Export published cells (planners)",
    response_class=Response,
    responses={
        200: {"description": "The file (columns window_start, window_end, res, cell, people, "
              "density_km2, band; GeoJSON and GeoPackage with the hexagons)"},
        401: {"description": "Exports are for planners: send a planner token"},
        404: {"description": "No such window or release"},
        422: {"description": "Invalid parameter"},
    },
)  # fmt: skip
async def cells(
    request: Request,
    fmt: Annotated[Fmt, Path(description="File format")],
    window: WindowParam,
    res: Annotated[int | None, Query(description="H3 resolution (default: base)", ge=0, le=15)] = (
        None
    ),
) -> Response:
    """Return the exact published cells of the latest release (or ``?window=`` / ``?release=``)
    at one resolution as a file planners open in their GIS."""
    who = audience(request)
    if not who.private:
        raise Unauthorized("exports are for planners: send a token of HEATMAP_PLANNER_TOKENS")
    body, name = await run_in_threadpool(export_cells, who.reader, window, res, fmt)
    return Response(
        body,
        media_type=MEDIA[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "private, no-store",
        },
    )
