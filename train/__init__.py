"""Training package: stream AEM / real shards into a backbone for the three stages.

Modules: ``config`` (typed configs), ``data`` (shard datasets), ``augment``
(batch augmentation), ``models`` (backbone registry, RFNet), ``losses``,
``loop`` (one training loop), ``stages`` (pretrain / train / posttrain),
``kd`` (knowledge distillation), ``checkpoint``, ``evaluate``, ``predict``.
"""

from __future__ import annotations

from aem_synth import __version__

__all__ = ["__version__"]
