"""The read side: which window (catalog, reader), and the answers built on its snapshots.

``heatmap.api`` and the CLI parse a request into values (:class:`Ref`, a bbox, a point), call
one function of this package and wrap the result; nothing here knows HTTP.
"""

from heatmap.read.catalog import WindowCatalog, WindowList
from heatmap.read.reader import Reader
from heatmap.read.ref import LATEST, Ref

__all__ = ["LATEST", "Ref", "Reader", "WindowCatalog", "WindowList"]
