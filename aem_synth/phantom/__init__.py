"""Phantom data: a procedural BraTS-like dataset written in real on-disk layouts.

Takes a seed, a case count, a shape and a layout.  Gives per-case parameters
(``sample_phantom_params``), their rendering to arrays (``render_phantom``) and
datasets on disk with the true mirror plane of each case
(``write_phantom_dataset``).
"""

from __future__ import annotations

from aem_synth.phantom.anatomy import (
    PLANE_RANGES,
    TISSUE_LABEL,
    TISSUES,
    PhantomArrays,
    PhantomParams,
    plane_frame,
    sample_phantom_params,
)
from aem_synth.phantom.generator import (
    DEFAULT_SHAPE,
    MIN_AXIS,
    PhantomCase,
    brats_affine,
    disk_label,
    make_phantom_case,
    parse_shape,
    write_phantom_dataset,
)
from aem_synth.phantom.render import render_phantom

__all__ = [
    "DEFAULT_SHAPE",
    "MIN_AXIS",
    "PLANE_RANGES",
    "PhantomArrays",
    "PhantomCase",
    "PhantomParams",
    "TISSUES",
    "TISSUE_LABEL",
    "brats_affine",
    "disk_label",
    "make_phantom_case",
    "parse_shape",
    "plane_frame",
    "render_phantom",
    "sample_phantom_params",
    "write_phantom_dataset",
]
