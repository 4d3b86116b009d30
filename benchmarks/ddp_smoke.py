"""``train`` under ``torchrun``, saying whether the stage ran data-parallel (GPU check, issue 14 part 6).

``torchrun --nproc_per_node 1 benchmarks/ddp_smoke.py run --stage S --config FILE``
runs the ``train`` command line exactly as ``torchrun ... -m train.cli run ...``
does and prints, on every rank, one line with the world size, the process
group's backend and the class of the model the loop trained
(``DistributedDataParallel`` or the bare backbone).  Under ``torchrun`` even
one process takes the data-parallel path (:func:`train.fit.distributed.init_distributed`):
the NCCL (CPU: gloo) process group, ``DistributedDataParallel``, the
distributed sampler, the gathered RNG states and the barriers.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch.distributed as dist


def _watch(seen: dict[str, Any]) -> None:
    """Record what ``train.fit.loop`` wraps the model in, and the process group at that point."""
    from train.fit import loop

    wrap = loop.wrap_model

    def recorded(model: Any, info: Any, device: Any) -> Any:
        out = wrap(model, info, device)
        seen.update(
            model=type(out).__name__,
            world_size=dist.get_world_size() if dist.is_initialized() else 1,
            backend=dist.get_backend() if dist.is_initialized() else "none",
            device=str(device),
        )
        return out

    loop.wrap_model = recorded


def main() -> None:
    args = sys.argv[1:]
    seen: dict[str, Any] = {}
    _watch(seen)
    from train.cli import main as cli

    rank = os.environ.get("RANK", "-")
    try:
        cli.main(args=args, prog_name="train")
    finally:
        print(
            f"[ddp_smoke] rank {rank}: WORLD_SIZE {os.environ.get('WORLD_SIZE', '-')}, "
            f"process group {seen.get('backend', 'not reached')}, world size "
            f"{seen.get('world_size', '-')}, model {seen.get('model', 'not reached')} on "
            f"{seen.get('device', '-')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
