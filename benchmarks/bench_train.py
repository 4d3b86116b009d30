"""Training-step throughput of RFNet (base 16, 4 classes): CPU fp32, and GPU fp32 vs bf16.

CPU: median wall time of one optimiser step (forward, RFNet loss, backward,
Adam) at batch 1 for 48^3 and 64^3 crops (``--full`` adds 80^3 at batch 2).
GPU (only when CUDA is available): iterations/s at batch 2, 80^3, fp32 and
bf16 autocast, with tensors already on the GPU and with the real loader
(``CropDataset`` + ``make_loader`` over a compressed shard store written to a
temporary folder), and the loader's cost as a share of throughput.

Usage::

    python benchmarks/bench_train.py [--reps 3] [--threads 2] [--full]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.fit.losses import rfnet_loss
from train.models import build_backbone, count_parameters


def _batch(b: int, crop: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 4, crop, crop, crop, generator=g).to(device),
        "label": torch.randint(0, 4, (b, crop, crop, crop), generator=g).to(device),
        "mask": torch.ones(b, 4, dtype=torch.bool, device=device),
    }


def _stepper(
    device: torch.device, amp: torch.dtype | None
) -> Callable[[dict[str, torch.Tensor]], None]:
    torch.manual_seed(0)
    model = build_backbone("rfnet", num_classes=4, base_channels=16).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)

    def step(b: dict[str, torch.Tensor]) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(b["image"], b["mask"])
            loss, _ = rfnet_loss(out, b["label"], modality_mask=b["mask"])
        loss.backward()
        opt.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(
    step: Callable[[], None], device: torch.device, reps: int, warmup: int = 1
) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def cpu_section(reps: int, full: bool) -> None:
    device = torch.device("cpu")
    step = _stepper(device, None)
    print(
        f"CPU fp32, torch threads = {torch.get_num_threads()}, RFNet base 16 "
        f"({count_parameters(build_backbone('rfnet', num_classes=4)):,} parameters)"
    )
    sizes = [(1, 48), (1, 64)] + ([(2, 80)] if full else [])
    for b, crop in sizes:
        batch = _batch(b, crop, device)
        times = _time_steps(functools.partial(step, batch), device, reps)
        med = statistics.median(times)
        print(
            f"  batch {b}, {crop}^3: median {med:.2f} s/step over {reps} "
            f"(min {min(times):.2f}, max {max(times):.2f}); {b / med:.2f} crops/s"
        )


def _write_store(root: Path, n: int = 4, shape: tuple[int, int, int] = (144, 176, 140)) -> Path:
    from aem_synth.store.shards import SCHEMA_VERSION, Sample, write_manifest, write_shard

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    samples = []
    for i in range(n):
        c = rng.uniform(-0.4, 0.4, size=3)[:, None, None, None]
        r = np.sqrt(((grid - c) ** 2).sum(0))
        label = (np.select([r < 0.08, r < 0.14, r < 0.25], [1, 3, 2], 0) * brain).astype(np.uint8)
        image = (rng.normal(0, 1, size=(4, *shape)) * brain).astype(np.float32)
        samples.append(Sample(f"s{i}", image, label, {"present": [True] * 4}))
    info = write_shard(root / "real/train-00000.h5", samples, root=root, kind="real", split="train")
    write_manifest(root, {"schema_version": SCHEMA_VERSION, "shards": [info.to_dict()]})
    return root


def gpu_section(reps: int, workers: int) -> None:
    if not torch.cuda.is_available():
        print("GPU: no CUDA device available on this machine; GPU figures not measured")
        return
    from train.data import CropDataset, batch_to_device, make_loader, stage_refs
    from train.data.augment import BatchAugment

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"GPU: {torch.cuda.get_device_name(device)}, batch 2, 80^3, {reps} timed iterations each")
    fixed = _batch(2, 80, device)
    rates = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        step = _stepper(device, amp)
        times = _time_steps(functools.partial(step, fixed), device, reps, warmup=3)
        rates[name] = 1 / statistics.median(times)
        print(f"  {name}, tensors on GPU: {rates[name]:.2f} it/s (median)")
    with tempfile.TemporaryDirectory() as tmp:
        store = _write_store(Path(tmp))
        ds = CropDataset(
            stage_refs(store, "train"),
            crop=(80, 80, 80),
            samples_per_epoch=2 * (reps + 3),
            compact=True,  # as training loads: float16 channels of the drawn modalities
        )
        loader = make_loader(ds, batch_size=2, workers=workers, seed=0)
        augment, gen = BatchAugment(), torch.Generator(device=device).manual_seed(0)
        for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            step = _stepper(device, amp)
            it = iter(loader)

            def loaded_step(step: Callable = step, it: Iterator[Any] = it) -> None:
                b = batch_to_device(next(it), device)
                b["image"], b["label"] = augment(b["image"], b["label"], b["mask"], gen)
                step(b)

            times = _time_steps(loaded_step, device, reps, warmup=3)
            rate = 1 / statistics.median(times)
            print(
                f"  {name}, real loader ({workers} workers) + GPU augmentation: {rate:.2f} it/s; "
                f"loader cost {100 * (1 - rate / rates[name]):.1f}% of throughput"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--full", action="store_true", help="also time 80^3 at batch 2 on CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from aem_synth.build.tuning import tune_allocator

    print(f"allocator tuning {'on' if tune_allocator() else 'off'} (as in `train run`)")
    cpu_section(args.reps, args.full)
    gpu_section(max(args.reps, 10), args.workers)


if __name__ == "__main__":
    main()
