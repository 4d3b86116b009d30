"""Offline synthesis of AEM pre-training data for brain-tumour segmentation.

Stages, one sub-package each: ``dataset`` (discover, load, preprocess, splits)
-> ``synthesis`` (calibrate, mirror, AEM, transfer, fusion, pairing) -> ``store``
(HDF5 shards, verify) <- ``build`` (Dask orchestration); ``phantom`` writes
procedural test data.  This package never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
