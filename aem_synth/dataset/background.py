"""Background detection: which value fills the outside of the head in each modality.

Skull-stripped releases fill the outside with one constant.  Raw BraTS uses 0,
but many preprocessed copies are z-scored first and carry a negative constant
(e.g. -3.6), and brain voxels can then be negative too; "brain = any modality
> 0" would drop them.  The constant is read from the volume's six faces, where
no brain lies in a skull-stripped scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from aem_synth.types import MODALITIES, FloatArray

__all__ = [
    "BORDER_MIN_FRACTION",
    "by_modality",
    "case_background",
    "describe_background",
    "detect_background",
]

BORDER_MIN_FRACTION = 0.5
"""Share of the six faces' voxels that must hold one value for it to be the background."""


def detect_background(channel: FloatArray) -> float | None:
    """The constant filling the outside of the head, read from the volume's faces.

    Parameters
    ----------
    channel : ndarray, float, (X, Y, Z)
        One modality, raw intensities (any memory order).

    Returns
    -------
    float or None
        The most frequent value among the corner voxels when at least
        ``BORDER_MIN_FRACTION`` of all face voxels equal it; ``None`` when the
        border is not constant (a scan that is not skull-stripped, or cropped
        to the brain), in which case callers fall back to "background <= 0".
    """
    if channel.ndim != 3:
        raise ValueError(f"channel must be 3-D (X, Y, Z), got shape {channel.shape}")
    corners = channel[np.ix_(*([0, n - 1] for n in channel.shape))].ravel()
    values, counts = np.unique(corners, return_counts=True)
    candidate = values[np.argmax(counts)]
    faces = (
        channel[0],
        channel[-1],
        channel[:, 0],
        channel[:, -1],
        channel[:, :, 0],
        channel[:, :, -1],
    )
    hits = sum(int(np.count_nonzero(face == candidate)) for face in faces)
    total = sum(face.size for face in faces)
    if hits < BORDER_MIN_FRACTION * total:
        return None
    return float(candidate)


def describe_background(background: Mapping[str, float | None]) -> str:
    """``"0"`` when every modality's background is 0, else ``"flair -3.6, t1 none"``.

    ``none`` marks a modality whose border is not constant (brain taken as > 0).
    """
    if all(v == 0.0 for v in background.values()):
        return "0"
    return ", ".join(
        f"{name} {'none' if v is None else f'{v:.4g}'}" for name, v in background.items()
    )


def case_background(image: FloatArray, present: Sequence[bool]) -> tuple[float | None, ...]:
    """:func:`detect_background` of each present modality of ``image`` (4, X, Y, Z).

    Returns
    -------
    tuple of 4 (float or None)
        ``None`` for absent modalities and for borders that are not constant.
    """
    return tuple(
        detect_background(channel) if used else None
        for channel, used in zip(image, present, strict=True)
    )


def by_modality(
    background: Sequence[float | None] | None, present: Sequence[bool]
) -> dict[str, float | None]:
    """``{modality: background}`` of the present modalities (``None`` background: unknown)."""
    values = background if background is not None else (None,) * len(MODALITIES)
    return {m: v for m, v, used in zip(MODALITIES, values, present, strict=True) if used}
