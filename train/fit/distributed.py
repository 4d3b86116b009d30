"""Devices and ``torchrun`` data parallelism.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; when they are
present the process group is initialised with ``nccl`` on CUDA and ``gloo``
on CPU, also for a single process (``torchrun --nproc_per_node 1`` runs the
same data-parallel path as N GPUs).  Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "autocast_dtype",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "place_model",
    "resolve_device",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Position of this process in the job (``world_size == 1`` when not distributed).

    ``launched`` is True when ``torchrun`` started the process (``WORLD_SIZE``
    set), whatever the world size.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Data-parallel: launched by ``torchrun`` (any world size) or more than one rank."""
        return self.launched or self.world_size > 1


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {key} must be an integer, got {raw!r}") from None


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA (``cuda:local_rank``) when available else CPU; ``"cuda"`` requires CUDA."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' was requested but torch finds no CUDA device")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device``; on CPU its 5-D (convolution) weights also go channels-last.

    oneDNN's channels-last 3-D convolutions are 2-4x faster than the default
    layout at the few channels of small models (measured at 4-8 channels on
    32^3 inputs: ``benchmarks/bench_step.py``), and a channels-last weight makes
    every convolution run channels-last whatever its input's layout.  Values
    are unchanged; on CUDA the layout is left as it is.
    """
    device = torch.device(device)
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return model


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``"bf16"`` (or ``"auto"`` on CUDA), ``None`` (plain fp32) otherwise."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def init_distributed(
    device_preference: str = "auto", env: Mapping[str, str] | None = None
) -> tuple[DistInfo, torch.device]:
    """Read the ``torchrun`` environment, start the process group and pick this rank's device.

    Returns
    -------
    (DistInfo, torch.device)
        Single-process ``DistInfo()`` when ``WORLD_SIZE`` is unset; under
        ``torchrun`` a process group is started even for one process.
    """
    env = os.environ if env is None else env
    info = DistInfo(
        rank=_env_int(env, "RANK", 0),
        world_size=_env_int(env, "WORLD_SIZE", 1),
        local_rank=_env_int(env, "LOCAL_RANK", 0),
        launched="WORLD_SIZE" in env,
    )
    device = resolve_device(device_preference, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup_distributed() -> None:
    """Destroy the process group if this process started one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when single-process)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model`` itself."""
    if not info.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is untouched)."""
    out = value.detach().clone()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out
