"""The HTTP service (FastAPI): the only package, with ``heatmap.web``, that knows about HTTP."""

from heatmap.api.app import create_app

__all__ = ["create_app"]
