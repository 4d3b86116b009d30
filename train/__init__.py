"""Training package: stream AEM / real shards into a backbone for the three stages.

Stages, one sub-package each: ``data`` (stream crops from shards, augmentation,
modality subsets) -> ``models`` (backbone registry, RFNet) -> ``fit`` (loop,
stages, KD, losses, checkpoints) -> ``inference`` (sliding window, metrics,
evaluate, predict) -> ``report`` (tables, plots, figures); ``config`` holds the
typed configs and ``cli`` the ``train`` command.
"""

from __future__ import annotations

from aem_synth import __version__

__all__ = ["__version__"]
