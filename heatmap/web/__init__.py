"""The pages: planner map (``GET /``) and citizen widget (``GET /widget``), assets served locally.

``heatmap.api`` calls :func:`include` with the app and its settings.
"""

from heatmap.web.routes import create_router, include

__all__ = ["create_router", "include"]
