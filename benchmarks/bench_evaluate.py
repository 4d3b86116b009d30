"""Encoder reuse in 15-subset evaluation (issue 5 "must show" 1): same probabilities, how much faster.

One BraTS-size case (a real sample, loaded, normalised and cropped to its
brain box exactly as ``train predict`` does) is predicted for all 15 modality
subsets by sliding-window inference with a randomly initialised full-size
RFNet (``base_channels`` 16; ``--backbone uhved`` / ``robustseg`` with their
published widths 8 / 16, or ``--base-channels``), fp32:

* ``reuse``    each window batch encoded once, decoded for every subset;
* ``no-reuse`` 15 independent full forward passes (encode + decode per subset),
  as the public reference code evaluates.

Printed: windows, max |difference| of the probabilities between the two
(target <= 1e-5), median wall time of each over ``--repeats`` runs, the
speed-up, and the measured time of one encode and one decode of a window,
which bound the speed-up: ``15 (E + D) / (E + 15 D)``.

``--quick`` predicts only the central 80^3 block of the brain box (one
window; the same comparison with fewer windows) so it finishes in minutes on
a small shared CPU; without it the whole cropped case is used (36 windows at
80^3 / 50% overlap: hours on 2 CPU cores, minutes on a GPU).  The GPU section
runs the full case when CUDA is available (fp32 and bf16 autocast) and
otherwise says that it was skipped.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py --quick``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from train.data.subsets import ALL_SUBSETS
from train.inference.sliding_window import (
    WindowOptions,
    padded_shape,
    predict_subsets,
    window_boxes,
)
from train.models.base import Backbone

CASE = "Brats18_2013_2_1"


def _samples_dir() -> Path:
    env = os.environ.get("AEM_BRATS_SAMPLES")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for p in here.parents:
        if (p / "shared" / "brats_samples").is_dir():
            return p / "shared" / "brats_samples"
    raise SystemExit("real BraTS samples not found: set AEM_BRATS_SAMPLES")


def load_case(case_dir: Path) -> np.ndarray:
    """Normalised, brain-cropped image float32 (4, X, Y, Z) of a real case."""
    from aem_synth.dataset.discover import discover_case
    from aem_synth.dataset.load import load_case as load
    from aem_synth.dataset.preprocess import preprocess_case

    return preprocess_case(load(discover_case(case_dir))).image


def central_block(image: np.ndarray, size: int) -> np.ndarray:
    starts = [max(0, (s - size) // 2) for s in image.shape[1:]]
    return np.ascontiguousarray(image[:, *(slice(a, a + size) for a in starts)])


def time_encode_decode(model: Backbone, window: int, device: torch.device) -> tuple[float, float]:
    x = torch.zeros((1, 4, window, window, window), device=device)
    mask = torch.ones((1, 4), dtype=torch.bool, device=device)
    with torch.inference_mode():
        model.decode(model.encode(x), mask)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        enc = model.encode(x)
        _sync(device)
        t1 = time.perf_counter()
        model.decode(enc, mask)
        _sync(device)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def count_flops(model: Backbone, window: int) -> tuple[float, float]:
    """Floating-point operations (GFLOP) of one encode and one decode of a window."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, 4, window, window, window))
    mask = torch.ones((1, 4), dtype=torch.bool)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            enc = model.encode(x)
        enc_flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.decode(enc, mask)
        dec_flops = counter.get_total_flops()
    return enc_flops / 1e9, dec_flops / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model, image, args, device, amp=False) -> dict[str, float]:
    kw = dict(
        window=(args.window,) * 3,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=device,
        amp=amp,
    )
    modes = (("reuse", True, 1), ("reuse-x5", True, 5), ("no-reuse", False, 1))
    times: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    outs: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, reuse, per_call in modes:
            _sync(device)
            t0 = time.perf_counter()
            outs[name] = predict_subsets(
                model, image, ALL_SUBSETS, reuse_encoder=reuse, subset_batch=per_call, **kw
            )
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    diff = max(float(np.abs(outs["reuse"][s] - outs["no-reuse"][s]).max()) for s in ALL_SUBSETS)
    diff5 = max(float(np.abs(outs["reuse-x5"][s] - outs["reuse"][s]).max()) for s in ALL_SUBSETS)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "diff": diff,
        "diff5": diff5,
        "reuse_s": med["reuse"],
        "reuse5_s": med["reuse-x5"],
        "noreuse_s": med["no-reuse"],
        "speedup": med["no-reuse"] / med["reuse"],
        "speedup5": med["no-reuse"] / med["reuse-x5"],
    }


def report(label: str, model, image, args, device, amp=False) -> None:
    n_win = len(
        window_boxes(
            padded_shape(image.shape[1:], (args.window,) * 3),
            WindowOptions((args.window,) * 3, args.overlap),
        )
    )
    e, d = time_encode_decode(model, args.window, device)
    r = run(model, image, args, device, amp)
    bound = 15 * (e + d) / (e + 15 * d)
    print(
        f"[{label}] volume {tuple(image.shape[1:])}, {n_win} window(s) of {args.window}^3, "
        f"overlap {args.overlap}, 15 subsets, median of {args.repeats} run(s)"
    )
    print(f"[{label}]   max |p_reuse - p_no_reuse| = {r['diff']:.3e}  (target <= 1e-5)")
    print(
        f"[{label}]   reuse {r['reuse_s']:.2f} s   no-reuse {r['noreuse_s']:.2f} s   "
        f"speed-up {r['speedup']:.2f}x  (target >= 3x)"
    )
    print(
        f"[{label}]   reuse, 5 subsets per decoder call {r['reuse5_s']:.2f} s   speed-up "
        f"{r['speedup5']:.2f}x; max |p_x5 - p_reuse| = {r['diff5']:.3e}"
    )
    print(
        f"[{label}]   one window: encode {e:.3f} s, decode {d:.3f} s -> speed-up bound "
        f"15(E+D)/(E+15D) = {bound:.2f}x"
    )
    fe, fd = args.flops
    print(
        f"[{label}]   one window: encode {fe:.1f} GFLOP ({fe / e:.0f} GFLOP/s), decode "
        f"{fd:.1f} GFLOP ({fd / d:.0f} GFLOP/s) -> arithmetic bound "
        f"15(E+D)/(E+15D) = {15 * (fe + fd) / (fe + 15 * fd):.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=Path, default=None, help=f"case folder (default {CASE})")
    ap.add_argument("--quick", action="store_true", help="central 80^3 block only (one window)")
    ap.add_argument("--window", type=int, default=80)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--backbone", default="rfnet", choices=("rfnet", "uhved", "robustseg"))
    ap.add_argument("--base-channels", type=int, default=0, help="0: the published width")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from aem_synth.build.tuning import tune_allocator
    from train.models import build_backbone

    tuned = tune_allocator()  # as `train evaluate` does

    case_dir = args.case or _samples_dir() / CASE
    full = load_case(case_dir)
    image = central_block(full, args.window) if args.quick else full
    torch.manual_seed(0)
    base = args.base_channels or {"rfnet": 16, "uhved": 8, "robustseg": 16}[args.backbone]
    model = build_backbone(args.backbone, num_classes=4, base_channels=base).eval()
    n_params = sum(p.numel() for p in model.parameters())
    args.flops = count_flops(model, args.window)
    print(
        f"case {case_dir.name}: cropped brain box {tuple(full.shape[1:])}; {args.backbone} "
        f"base {base}, "
        f"{n_params / 1e6:.2f} M parameters, random init; torch {torch.__version__}, "
        f"{args.threads} CPU thread(s); mode {'--quick' if args.quick else 'full case'}; "
        f"allocator tuning {'on' if tuned else 'off'}"
    )
    report("CPU fp32", model, image, args, torch.device("cpu"))
    if not torch.cuda.is_available():
        print("[GPU] skipped: CUDA is not available on this machine")
        return
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    gpu_model = model.to(dev)
    report(f"GPU fp32 {torch.cuda.get_device_name(dev)}", gpu_model, full, args, dev)
    report(f"GPU bf16 {torch.cuda.get_device_name(dev)}", gpu_model, full, args, dev, amp=True)


if __name__ == "__main__":
    main()
