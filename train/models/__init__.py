"""Backbone registry: config names -> model classes, with a builder.

Backbones follow the interface of :mod:`train.models.base`
(``encode(image)``, ``decode(enc, mask)``, ``forward(image, mask)``).
To add one, implement :class:`~train.models.base.Backbone` and add an entry
to :data:`BACKBONES`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from train.models.base import Backbone, EncoderOutput, ModelOutput
from train.models.rfnet import RFNet
from train.models.robustseg import RobustSeg
from train.models.uhved import UHVED

__all__ = [
    "BACKBONES",
    "Backbone",
    "EncoderOutput",
    "ModelOutput",
    "RFNet",
    "RobustSeg",
    "UHVED",
    "build_backbone",
    "count_parameters",
]

BACKBONES: dict[str, type[Backbone] | Callable[..., Backbone]] = {
    "rfnet": RFNet,
    "uhved": UHVED,
    "robustseg": RobustSeg,
}
"""Registered backbones; the default is ``"rfnet"``.  ``uhved`` (Dorent et al., MICCAI 2019)
and ``robustseg`` (Chen et al., MICCAI 2019) add their own training losses
(``ModelOutput.aux_losses``, weighted by ``loss.kl_weight`` / ``loss.recon_weight``)."""


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Instantiate the registered backbone ``name`` with keyword arguments.

    Parameters
    ----------
    name : str
        Registry key (case-sensitive), e.g. ``"rfnet"``.
    **kwargs
        Constructor arguments, e.g. ``num_classes=4``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the registered ones) or an
        argument the backbone does not accept.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(sorted(BACKBONES))}"
        )
    factory = BACKBONES[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(
                f"backbone {name!r} does not accept argument(s) {unknown}; "
                f"accepted: {sorted(params)}"
            )
    model = factory(**kwargs)
    if not isinstance(model, Backbone):
        raise ValueError(
            f"backbone factory {name!r} returned {type(model).__name__}, not a Backbone"
        )
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only ``requires_grad`` ones if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
