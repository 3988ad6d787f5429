"""``python -m heatmap``."""

from heatmap.cli import main

main()
