"""Offline synthesis of AEM pre-training data for brain-tumour segmentation.

Pipeline stages (one module each): ``discover`` -> ``load`` -> ``calibrate`` ->
``preprocess`` -> ``synthesis`` -> ``shards`` -> ``build``.  This package never
imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
