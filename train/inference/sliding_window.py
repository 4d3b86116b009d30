"""Sliding-window inference over modality subsets, reusing the encoder across subsets.

The backbone contract (``train.models``): ``model.encode(image)`` takes
``(B, 4, X, Y, Z)`` float and returns an encoder output that does not depend
on which modalities are present; ``model.decode(enc, mask)`` takes that output
and a ``(B, 4)`` bool mask (modality order FLAIR, T1, T1ce, T2) and returns an
object with ``.logits`` ``(B, C, X, Y, Z)``.  Spatial sizes must be divisible
by 8 (three poolings).  Because the encoder is mask-independent, each window
batch is encoded once and decoded once per requested subset; with
``reuse_encoder=False`` every subset instead runs its own complete pass
(encode + decode), which is what the speed-up benchmark compares against.

Axis order everywhere: ``(C, X, Y, Z)`` for one volume, canonical RAS axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "DECODE_VOXEL_BUDGET",
    "auto_subset_batch",
    "DEFAULT_WINDOW",
    "resolve_window",
    "trained_window",
    "SPATIAL_MULTIPLE",
    "Subset",
    "WindowOptions",
    "gaussian_importance",
    "padded_shape",
    "predict_subsets",
    "resolve_device",
    "window_boxes",
    "window_size",
    "window_starts",
]

SPATIAL_MULTIPLE = 8
DEFAULT_WINDOW = (80, 80, 80)
DECODE_VOXEL_BUDGET = 10 * 32**3
"""Voxels one batched decoder call may hold before subsets are decoded apart."""
"""Window when a checkpoint records no training crop (the paper's crop)."""
Subset = tuple[bool, bool, bool, bool]


class EncodeDecodeModel(Protocol):
    """What sliding-window inference needs from a backbone."""

    def encode(self, image: torch.Tensor) -> Any: ...

    def decode(self, enc: Any, mask: torch.Tensor) -> Any: ...

    def eval(self) -> Any: ...


@dataclass(frozen=True)
class WindowOptions:
    """Sliding-window settings.

    Attributes
    ----------
    window : tuple of int
        Window size in voxels along (X, Y, Z); each divisible by 8.
    overlap : float
        Fraction of the window shared by neighbours, in [0, 1).
    gaussian : bool
        Weight each window by a Gaussian importance map (sigma = window / 8)
        instead of uniformly.
    batch_size : int
        Windows per forward pass.
    amp : bool
        bf16 autocast (CUDA only; ignored on CPU so that CPU runs stay fp32).
    subset_batch : int
        Modality subsets decoded together in one decoder call (the window
        batch's encoder features repeated once per subset): fewer, larger
        kernels.  0 (default) chooses by :func:`auto_subset_batch`.  Needs an
        encoder output with ``repeat_batch`` (RFNet's has it); others are
        decoded one subset at a time.
    """

    window: tuple[int, int, int] = DEFAULT_WINDOW
    overlap: float = 0.5
    gaussian: bool = False
    batch_size: int = 2
    amp: bool = False
    subset_batch: int = 0

    def __post_init__(self) -> None:
        if len(self.window) != 3 or any(w <= 0 or w % SPATIAL_MULTIPLE for w in self.window):
            raise ValueError(
                f"window must be 3 positive sizes divisible by {SPATIAL_MULTIPLE}, got {self.window}"
            )
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.subset_batch < 0:
            raise ValueError(f"subset_batch must be >= 0 (0 = automatic), got {self.subset_batch}")

    @property
    def subsets_per_call(self) -> int:
        """``subset_batch``, or :func:`auto_subset_batch` when it is 0."""
        return self.subset_batch or auto_subset_batch(self.window, self.batch_size)


def auto_subset_batch(window: Sequence[int], batch_size: int) -> int:
    """Subsets per decoder call: as many as fit :data:`DECODE_VOXEL_BUDGET` voxels, 1 to 15.

    Measured on 2 CPU cores: RFNet base 4 at 32^3 windows, batch 2, is
    per-call-overhead bound and decodes 1.4x faster with 5 subsets per call;
    base 16 at 80^3 is compute bound and 1.4x *slower* with 5 (larger
    activations, no overhead to save).  So small windows batch and large
    ones do not.
    """
    voxels = int(np.prod(window)) * max(batch_size, 1)
    return int(min(15, max(1, DECODE_VOXEL_BUDGET // voxels)))


def window_size(window: Sequence[int] | int) -> tuple[int, int, int]:
    """One size for all axes, or three sizes (X, Y, Z), as a 3-tuple of voxels."""
    w = (window,) * 3 if isinstance(window, int) else tuple(int(v) for v in window)
    if len(w) != 3:
        raise ValueError(f"window must be one size or 3 sizes (X, Y, Z), got {window}")
    return w[0], w[1], w[2]


def trained_window(meta: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The training crop a checkpoint's metadata records, rounded up to a valid window.

    ``meta`` is the checkpoint metadata (``load_model_from_checkpoint``); the
    crop is ``meta["config"]["data"]["crop"]``.  ``None`` when it is not recorded.
    """
    cfg = meta.get("config") if isinstance(meta, Mapping) else None
    data = cfg.get("data") if isinstance(cfg, Mapping) else None
    crop = data.get("crop") if isinstance(data, Mapping) else None
    if not isinstance(crop, (list, tuple)) or len(crop) != 3:
        return None
    w = tuple(_ceil_to(max(int(c), 1), SPATIAL_MULTIPLE) for c in crop)
    return w[0], w[1], w[2]


def resolve_window(
    window: Sequence[int] | int | None, meta: Mapping[str, Any]
) -> tuple[tuple[int, int, int], str | None]:
    """Window to infer with, and a one-line note when it differs from the training crop.

    ``window=None`` takes the training crop recorded in the checkpoint (80^3
    when none is recorded).  A model normalises each window with instance
    norm, so a window unlike its training crops changes its predictions.
    """
    trained = trained_window(meta)
    if window is None:
        return trained or DEFAULT_WINDOW, None
    w = window_size(window)
    if trained is None or w == trained:
        return w, None
    return w, (
        f"note: inference window {'x'.join(map(str, w))} differs from the training crop "
        f"{'x'.join(map(str, trained))} recorded in the checkpoint (the default); "
        "predictions usually suffer"
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_shape(shape: Sequence[int], window: Sequence[int]) -> tuple[int, int, int]:
    """Spatial shape after padding: at least the window, and divisible by 8."""
    return tuple(  # type: ignore[return-value]
        _ceil_to(max(s, w), SPATIAL_MULTIPLE) for s, w in zip(shape, window, strict=True)
    )


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis so that windows tile ``[0, size)``.

    ``size >= window`` is required (pad first).  The step is
    ``window * (1 - overlap)`` rounded down (at least 1); the starts are spread
    evenly so the last window ends exactly at ``size``.
    """
    if size < window:
        raise ValueError(f"axis of {size} voxels is smaller than the window {window}; pad first")
    step = max(1, int(window * (1.0 - overlap)))
    n = -(-(size - window) // step) + 1
    if n == 1:
        return [0]
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """Gaussian weight map ``(X, Y, Z)`` float32, max 1, strictly positive (nnU-Net style)."""
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float64) - (w - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / (w * sigma_scale)) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    positive_min = g[g > 0].min()
    return torch.clamp(g, min=float(positive_min)).to(torch.float32)


def _as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(image)
    if t.ndim != 4 or t.shape[0] != 4:
        raise ValueError(f"image must have shape (4, X, Y, Z), got {tuple(t.shape)}")
    return t.to(torch.float32)


def _pad(image: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    pads: list[int] = []
    for s, t in zip(reversed(image.shape[1:]), reversed(list(target)), strict=True):
        pads += [0, t - s]
    return torch.nn.functional.pad(image, pads) if any(pads) else image


def window_boxes(shape: Sequence[int], opts: WindowOptions) -> list[tuple[slice, ...]]:
    """Window boxes (slices along X, Y, Z) tiling a padded volume of spatial ``shape``."""
    starts = [window_starts(s, w, opts.overlap) for s, w in zip(shape, opts.window, strict=True)]
    return [
        tuple(slice(o, o + w) for o, w in zip(origin, opts.window, strict=True))
        for origin in itertools.product(*starts)
    ]


def _batches(boxes: list[tuple[slice, ...]], size: int) -> Iterator[list[tuple[slice, ...]]]:
    for i in range(0, len(boxes), size):
        yield boxes[i : i + size]


class _Accumulator:
    """Weighted sums of softmax probabilities per subset, plus the shared weight sum."""

    def __init__(self, shape: Sequence[int], device: torch.device) -> None:
        self.shape = tuple(shape)
        self.probs: dict[Subset, torch.Tensor] = {}
        self.weight = torch.zeros(self.shape, device=device)

    def add_weight(self, boxes: list[tuple[slice, ...]], w: torch.Tensor) -> None:
        for box in boxes:
            self.weight[box] += w

    def add(self, subset: Subset, boxes: list[tuple[slice, ...]], p: torch.Tensor) -> None:
        acc = self.probs.get(subset)
        if acc is None:
            acc = self.probs[subset] = p.new_zeros((p.shape[1], *self.shape))
        for i, box in enumerate(boxes):
            acc[(slice(None), *box)] += p[i]


def _softmax(out: Any, w: torch.Tensor) -> torch.Tensor:
    logits = out.logits if hasattr(out, "logits") else out
    return torch.softmax(logits.float(), dim=1) * w


def predict_subsets(
    model: EncodeDecodeModel,
    image: np.ndarray | torch.Tensor,
    subsets: Sequence[Sequence[bool]],
    *,
    window: Sequence[int] = (80, 80, 80),
    overlap: float = 0.5,
    gaussian: bool = False,
    batch_size: int = 2,
    device: str | torch.device = "auto",
    amp: bool = False,
    reuse_encoder: bool = True,
    subset_batch: int = 0,
) -> dict[Subset, np.ndarray]:
    """Softmax probabilities of a whole volume for each modality subset.

    Parameters
    ----------
    model
        Backbone with ``encode`` / ``decode`` (see module docstring); put in
        eval mode here.
    image : ndarray or Tensor, float32, (4, X, Y, Z)
        Normalised image, modality order FLAIR, T1, T1ce, T2, canonical axes.
    subsets : sequence of 4-bool masks
        Modality subsets to predict (e.g. ``train.data.subsets.ALL_SUBSETS``).
    window, overlap, gaussian, batch_size, amp, subset_batch
        See :class:`WindowOptions`.
    device : str or torch.device
        ``"auto"`` picks CUDA when present.
    reuse_encoder : bool
        True: one ``encode`` per window batch shared by all subsets.  False:
        every subset runs its own full pass (for comparison only).

    Returns
    -------
    dict
        subset (tuple of 4 bool) -> probabilities, float32 ``(C, X, Y, Z)``,
        summing to 1 over ``C`` at every voxel.
    """
    opts = WindowOptions(window_size(window), overlap, gaussian, batch_size, amp, subset_batch)
    keys = [_subset_key(s) for s in subsets]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"subsets must be non-empty and distinct, got {keys}")
    dev = resolve_device(device)
    vol = _as_tensor(image).to(dev)
    shape = tuple(vol.shape[1:])
    padded = _pad(vol, padded_shape(shape, opts.window))
    model.eval()
    with torch.inference_mode():
        acc = _run(model, padded, keys, opts, dev, reuse_encoder)
        crop = (slice(None), *(slice(0, s) for s in shape))
        return {s: (acc.probs[s] / acc.weight)[crop].cpu().numpy() for s in keys}


def _subset_key(mask: Sequence[bool]) -> Subset:
    key = tuple(bool(m) for m in mask)
    if len(key) != 4 or not any(key):
        raise ValueError(f"a modality subset is 4 flags with at least one True, got {tuple(mask)}")
    return key[0], key[1], key[2], key[3]


def _run(
    model: EncodeDecodeModel,
    padded: torch.Tensor,
    keys: list[Subset],
    opts: WindowOptions,
    dev: torch.device,
    reuse_encoder: bool,
) -> _Accumulator:
    boxes = window_boxes(padded.shape[1:], opts)
    w = gaussian_importance(opts.window) if opts.gaussian else torch.ones(opts.window)
    w = w.to(dev)
    autocast = torch.autocast(
        device_type=dev.type, dtype=torch.bfloat16, enabled=opts.amp and dev.type == "cuda"
    )
    acc = _Accumulator(padded.shape[1:], dev)
    groups = [keys] if reuse_encoder else [[k] for k in keys]
    for gi, group in enumerate(groups):
        for batch in _batches(boxes, opts.batch_size):
            x = torch.stack([padded[(slice(None), *b)] for b in batch]).to(dev)
            with autocast:
                enc = model.encode(x)
            per_call = opts.subsets_per_call if hasattr(enc, "repeat_batch") else 1
            for chunk in _chunks(group, per_call):
                with autocast:
                    out = _decode_subsets(model, enc, chunk, len(batch), dev)
                probs = _softmax(out, w).split(len(batch))
                for s, p in zip(chunk, probs, strict=True):
                    acc.add(s, batch, p)
            if gi == 0:
                acc.add_weight(batch, w)
    return acc


def _chunks(items: list[Subset], size: int) -> Iterator[list[Subset]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _decode_subsets(
    model: EncodeDecodeModel, enc: Any, subsets: list[Subset], n: int, dev: torch.device
) -> Any:
    """Decode ``n`` windows for each subset in one call; outputs are subset-major."""
    if len(subsets) == 1:
        return model.decode(enc, _mask(subsets[0], n, dev))
    masks = torch.cat([_mask(s, n, dev) for s in subsets])
    return model.decode(enc.repeat_batch(len(subsets)), masks)


def _mask(subset: Subset, n: int, dev: torch.device) -> torch.Tensor:
    return torch.tensor([subset] * n, dtype=torch.bool, device=dev)
