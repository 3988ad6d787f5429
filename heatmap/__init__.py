"""Crowd-density heatmap: anonymised pings -> private people counts per H3 cell -> bands.

The pipeline modules, in data-flow order: ``ingest`` (parse, validate, CRS), ``privacy`` (keyed
device hashing, suppression, DP), ``aggregate`` (windows, one position per device, counts, roll-up),
``store`` (SQLite/PostgreSQL), ``publish`` (snapshots with density and bands). ``api`` and ``web``
are the only modules that know about HTTP.
"""

__version__ = "0.3.0"
