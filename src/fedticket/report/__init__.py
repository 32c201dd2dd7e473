"""Read finished run folders and turn them into comparison tables and plots.

This package only reads results; it never writes into run folders.
"""

from fedticket.report.compare import compare, default_target
from fedticket.report.plots import plot
from fedticket.report.runs import Run, load_runs
from fedticket.report.table import format_layers, format_table, layers_markdown, to_markdown

__all__ = [
    "Run", "compare", "default_target", "format_layers", "format_table", "layers_markdown",
    "load_runs", "plot", "to_markdown",
]
