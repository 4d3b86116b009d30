"""Dataset stage: read a BraTS-like root into canonical, preprocessed cases.

Takes a dataset root on disk (BraTS 2015, 2018-2021, 2023 layouts, at any
nesting).  Gives :class:`~aem_synth.types.CaseRecord` lists (``discover``),
loaded volumes in canonical RAS ``(4, X, Y, Z)`` with their geometry
(``load_case``), brain-masked z-scored cases cropped to the brain box
(``preprocess_case``), train/val/test splits, and the ``inspect`` table.
"""

from __future__ import annotations

from aem_synth.dataset.discover import discover, discover_case
from aem_synth.dataset.inspection import InspectRow, format_table, inspect_case, inspect_root
from aem_synth.dataset.layouts import LAYOUT_ALIASES, LAYOUTS, SEG, Layout, resolve_layout
from aem_synth.dataset.load import (
    AFFINE_TOL_MM,
    affine_from_itk,
    itk_from_affine,
    load_case,
    load_volume,
    read_raw,
)
from aem_synth.dataset.preprocess import (
    bounding_box,
    brain_mask,
    crop,
    normalise,
    preprocess_case,
    to_original,
    uncrop,
    write_label_like,
)
from aem_synth.dataset.splits import (
    PAPER_SPLITS,
    SPLIT_NAMES,
    check_disjoint,
    make_split,
    read_splits,
    resolve_splits,
    split_sizes,
    write_splits,
)

__all__ = [
    "AFFINE_TOL_MM",
    "InspectRow",
    "LAYOUTS",
    "LAYOUT_ALIASES",
    "Layout",
    "PAPER_SPLITS",
    "SEG",
    "SPLIT_NAMES",
    "affine_from_itk",
    "bounding_box",
    "brain_mask",
    "check_disjoint",
    "crop",
    "discover",
    "discover_case",
    "format_table",
    "inspect_case",
    "inspect_root",
    "itk_from_affine",
    "load_case",
    "load_volume",
    "make_split",
    "normalise",
    "preprocess_case",
    "read_raw",
    "read_splits",
    "resolve_layout",
    "resolve_splits",
    "split_sizes",
    "to_original",
    "uncrop",
    "write_label_like",
    "write_splits",
]
