"""The three backbones side by side: parameters, CPU training step, memory; GPU fp32 vs bf16.

Per backbone (RFNet, U-HVED, RobustSeg) at its published width (base channels
16, 8 and 16; 4 classes), each measured in its own subprocess so that one
backbone's memory high-water mark does not hide another's:

* parameters: this implementation, the published network (see each model
  module's docstring for the count and the differences), and the part that
  inference runs (parameters reached by the gradient of the eval-mode logits);
* CPU fp32 training step at ``--crop``^3, batch ``--batch`` (default 32^3,
  batch 2): median (and minimum) wall time of forward, loss (segmentation +
  the backbone's own weighted terms), backward and an Adam (amsgrad) step,
  after one warm-up; on a shared machine the minimum is the steadier figure;
* GFLOP of one training forward + backward (convolutions and matrix products,
  ``torch.utils.flop_counter``), to read the step times against;
* memory of one forward + backward on CPU: the increase of the process's peak
  resident set size (``ru_maxrss``) over the model, optimiser-free, with the
  batch already allocated; it holds the activations kept for backward and the
  gradients (the size of the parameters, also printed);
* with CUDA: step time at 80^3, batch 2, fp32 and bf16 autocast, and
  ``torch.cuda.max_memory_allocated`` of each (otherwise the section says it
  was skipped).

The training masks are two different modality subsets, the absent channels
zeroed as the loader does.  ``--channels-last`` puts the CPU models' weights in
the channels-last 3-D layout: oneDNN's backward convolutions at fewer than 16
channels (U-HVED's full-resolution layers) are several times faster in it.

Run: ``.venv/bin/python benchmarks/bench_backbones.py [--reps 3] [--threads 2] [--channels-last]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

BACKBONES = ("rfnet", "uhved", "robustseg")
WIDTHS = {"rfnet": 16, "uhved": 8, "robustseg": 16}
PUBLISHED = {
    # RFNet: ours minus the three deep-supervision heads (908 parameters), the only
    # addition to dyh127/RFNet according to train/models/rfnet.py.
    "rfnet": ("dyh127/RFNet (PyTorch), 4 classes", -908),
    # The trainable variables of the released checkpoint models/u_hved/models/model.ckpt-60000.
    "uhved": ("ReubenDo/U-HVED checkpoint, b 8, 4 classes", 1_250_552),
    # Counted from cchen-cc/Robust-Mseg model.py (37,472,233 with its 5 classes).
    "robustseg": ("cchen-cc/Robust-Mseg model.py, 4 classes", 37_472_216),
}
AUX_WEIGHTS = {"kl": 0.1, "recon": 0.1}  # the [loss] defaults, as both papers publish


def _batch(b: int, crop: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]] * b)[:b]
    image = torch.randn(b, 4, crop, crop, crop, generator=g) * mask[:, :, None, None, None]
    label = torch.randint(0, 4, (b, crop, crop, crop), generator=g)
    return {"image": image.to(device), "label": label.to(device), "mask": mask.to(device)}


def _model(name: str, device: torch.device) -> torch.nn.Module:
    from train.models import build_backbone

    torch.manual_seed(0)
    return build_backbone(name, num_classes=4, base_channels=WIDTHS[name]).to(device).train()


def _loss(model: torch.nn.Module, b: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    from train.fit.losses import rfnet_loss
    from train.fit.objectives import forward_kwargs

    out = model(b["image"], b["mask"], **forward_kwargs(model, gen))
    loss, _ = rfnet_loss(out, b["label"], modality_mask=b["mask"], aux_weights=AUX_WEIGHTS)
    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_times(
    model: torch.nn.Module,
    b: dict[str, torch.Tensor],
    device: torch.device,
    reps: int,
    amp: torch.dtype | None = None,
    warmup: int = 1,
) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + reps):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = _loss(model, b, gen)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _inference_parameters(model: torch.nn.Module) -> int:
    """Parameters reached by the gradient of the eval-mode logits (what prediction runs)."""
    model.eval()
    x = torch.randn(1, 4, 16, 16, 16)
    model(x, torch.ones(1, 4, dtype=torch.bool)).logits.sum().backward()
    n = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    model.train()
    return n


def worker(name: str, crop: int, batch: int, reps: int, channels_last: bool) -> dict[str, Any]:
    """One backbone, CPU: parameters, fwd+bwd peak RSS increase, step times."""
    from train.models import count_parameters

    cpu = torch.device("cpu")
    model = _model(name, cpu)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    params = count_parameters(model)
    infer = _inference_parameters(model)
    b = _batch(batch, crop, cpu)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _loss(model, b, torch.Generator().manual_seed(0)).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    model.zero_grad(set_to_none=True)
    times = _step_times(model, b, cpu, reps)
    return {
        "name": name,
        "params": params,
        "inference_params": infer,
        "rss_increase_mib": (peak - before) / 1024,
        "times": times,
        "gflop": _step_gflop(model, b),
    }


def _step_gflop(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> float:
    """Convolution and matrix-product GFLOP of one forward + backward (elementwise ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _loss(model, b, torch.Generator().manual_seed(0)).backward()
    return counter.get_total_flops() / 1e9


def gpu_section(reps: int) -> None:
    if not torch.cuda.is_available():
        print("GPU: skipped, CUDA is not available on this machine")
        return
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"GPU {torch.cuda.get_device_name(dev)}: 80^3, batch 2, median of {reps} steps")
    print(
        "| backbone | fp32 s/step | bf16 s/step | bf16 speed-up | fp32 peak GiB | bf16 peak GiB |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for name in BACKBONES:
        model, b = _model(name, dev), _batch(2, 80, dev)
        cells = {}
        for tag, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            torch.cuda.reset_peak_memory_stats(dev)
            times = _step_times(model, b, dev, reps, amp, warmup=3)
            cells[tag] = (statistics.median(times), torch.cuda.max_memory_allocated(dev) / 2**30)
        print(
            f"| {name} | {cells['fp32'][0]:.3f} | {cells['bf16'][0]:.3f} | "
            f"{cells['fp32'][0] / cells['bf16'][0]:.2f}x | {cells['fp32'][1]:.2f} | "
            f"{cells['bf16'][1]:.2f} |"
        )
        del model, b
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--channels-last", action="store_true", help="CPU weights channels-last")
    ap.add_argument("--worker", choices=BACKBONES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from aem_synth.build.tuning import tune_allocator

    tuned = tune_allocator()  # as `train run` does
    if args.worker:
        res = worker(args.worker, args.crop, args.batch, args.reps, args.channels_last)
        print(json.dumps(res))
        return
    print(
        f"torch {torch.__version__}, {args.threads} CPU thread(s), allocator tuning "
        f"{'on' if tuned else 'off'}; CPU fp32 step at {args.crop}^3, batch {args.batch}, "
        f"median of {args.reps} after 1 warm-up; 4 classes; CPU weight layout "
        f"{'channels-last' if args.channels_last else 'contiguous'}"
    )
    print(
        "| backbone | base | parameters | published | source | difference | inference path "
        "| GFLOP/step | s/step median (min) | fwd+bwd peak RSS increase MiB | parameters MiB |"
    )
    print("|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|")
    for name in BACKBONES:
        opts = {"--worker": name, "--crop": args.crop, "--batch": args.batch, "--reps": args.reps}
        cmd = [sys.executable, __file__, *(f"{k}={v}" for k, v in opts.items())]
        cmd += [f"--threads={args.threads}"] + (["--channels-last"] if args.channels_last else [])
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        source, published = PUBLISHED[name]
        if published < 0:  # given as a difference to ours
            published = res["params"] + published
        print(
            f"| {name} | {WIDTHS[name]} | {res['params']:,} | {published:,} | {source} | "
            f"{res['params'] - published:+,} | {res['inference_params']:,} | {res['gflop']:.0f} | "
            f"{statistics.median(res['times']):.2f} ({min(res['times']):.2f}) | "
            f"{res['rss_increase_mib']:.0f} | "
            f"{res['params'] * 4 / 2**20:.0f} |"
        )
    gpu_section(max(args.reps, 10))


if __name__ == "__main__":
    main()
