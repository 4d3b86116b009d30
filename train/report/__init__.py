"""Report stage: tables, loss curves and figures from training and evaluation results.

Takes evaluation records and ``metrics.csv`` logs.  Gives the paper's
15-subset tables (Markdown, CSV), loss-curve PNGs and prediction figures.
"""

from __future__ import annotations

from train.report.figures import LABEL_COLOURS, plot_subset_predictions, tumour_slice
from train.report.plots import FIXED_HEAD, VAL_COLUMNS, MetricsLog, plot_loss_curve, read_metrics
from train.report.tables import (
    ABSENT_MARK,
    METRICS,
    PRESENT_MARK,
    SubsetTable,
    subset_table,
    to_markdown,
    write_per_case_csv,
    write_table_csv,
)

__all__ = [
    "ABSENT_MARK",
    "FIXED_HEAD",
    "LABEL_COLOURS",
    "METRICS",
    "MetricsLog",
    "PRESENT_MARK",
    "SubsetTable",
    "VAL_COLUMNS",
    "plot_loss_curve",
    "plot_subset_predictions",
    "read_metrics",
    "subset_table",
    "to_markdown",
    "tumour_slice",
    "write_per_case_csv",
    "write_table_csv",
]
