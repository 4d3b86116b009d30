"""CPU training step at the demo's size, side by side with an earlier revision of the code.

The step is the one ``train run`` takes in the demo (``pipelines/demo.toml``):
RFNet with ``base_channels = 4``, 4 classes, batch 2 of 32^3 crops whose
modality subsets cycle through the 15 subsets, absent modalities zeroed as
the loader does, ``BatchAugment`` (flips, rotations, intensity), the
segmentation objective with the ``sqrt`` class weighting, backward, Adam
(amsgrad).

Two worker processes run it: one imports ``train`` from this working tree,
the other from ``git archive --base`` (default: the last commit before the
step was optimised) unpacked into a temporary folder.  Both start from the
same weights (the base worker's initialisation, loaded by the other) and see
the same batches.  The script then

1. checks that one step gives the same loss and gradients in both (fp32
   tolerance; prints the largest differences),
2. times ``--rounds`` rounds of ``--steps`` steps, alternating the two
   workers so that machine noise hits both alike, and prints the median step
   in wall-clock and in CPU seconds of the worker, and their ratio,
3. prints a per-op profile summary (self CPU time, top ops) of each
   (``--profile``, on by default).

Run: ``python benchmarks/bench_step.py [--base REV] [--rounds 5] [--steps 6] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASE_REV = "528a788"
CROP, BATCH, BASE_CHANNELS = 32, 2, 4


# -- worker side ---------------------------------------------------------------------------
class Worker:
    """One training step loop at the demo's size; driven by JSON commands on stdin."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

    def init(self, state: str) -> dict[str, Any]:
        import functools

        import torch

        import train
        from train.data.augment import BatchAugment
        from train.data.subsets import ALL_SUBSETS
        from train.fit.losses import rfnet_loss
        from train.fit.objectives import SegObjective
        from train.models import build_backbone

        torch.manual_seed(0)
        model = build_backbone("rfnet", num_classes=4, base_channels=BASE_CHANNELS)
        if Path(state).exists():
            model.load_state_dict(torch.load(state, weights_only=True))
        else:
            torch.save(model.state_dict(), state)
        from train.fit import distributed

        # Whatever this revision does to place a model for training on the CPU.
        place = getattr(distributed, "place_model", lambda m, d: m.to(d))
        self.model = place(model, torch.device("cpu")).train()
        self.objective = SegObjective(functools.partial(rfnet_loss, class_weights="sqrt"))
        self.augment = BatchAugment(rotate_deg=10.0)
        g = torch.Generator().manual_seed(1)
        self.batches = []
        for i in range(15):
            mask = torch.tensor([ALL_SUBSETS[(2 * i) % 15], ALL_SUBSETS[(2 * i + 1) % 15]])
            image = (
                torch.randn(BATCH, 4, CROP, CROP, CROP, generator=g) * mask[:, :, None, None, None]
            )
            label = torch.randint(0, 4, (BATCH, CROP, CROP, CROP), generator=g)
            self.batches.append({"image": image, "label": label, "mask": mask})
        self.reset()
        return {"train": str(Path(train.__file__).parent)}

    def reset(self) -> None:
        import torch

        from train.config import StageConfig
        from train.fit.optim import build_optimizer

        # The optimiser ``train run`` builds for this revision: Adam (amsgrad), the
        # demo's pretrain lr, default weight decay.
        self.optimizer = build_optimizer(self.model.parameters(), StageConfig(lr=1e-2))
        self.gen = torch.Generator().manual_seed(2)
        self.i = 0

    def step(self) -> Any:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        image, label = self.augment(b["image"], b["label"], b["mask"], self.gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.objective(
            self.model, {"image": image, "label": label, "mask": b["mask"]}, self.gen
        )
        loss.backward()
        self.optimizer.step()
        return loss

    def steps(self, n: int) -> dict[str, Any]:
        wall, cpu = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            self.step()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return {"wall": wall, "cpu": cpu}

    def check(self, out: str) -> dict[str, Any]:
        """Loss and gradients of the first batch (no optimiser step), saved to ``out``."""
        torch = self.torch
        b = self.batches[0]
        gen = torch.Generator().manual_seed(3)
        image, label = self.augment(b["image"], b["label"], b["mask"], gen)
        self.model.zero_grad(set_to_none=True)
        loss, _ = self.objective(
            self.model, {"image": image, "label": label, "mask": b["mask"]}, gen
        )
        loss.backward()
        grads = {
            n: p.grad.detach().clone().contiguous()
            for n, p in self.model.named_parameters()
            if p.grad is not None
        }
        torch.save({"loss": loss.detach(), "grads": grads}, out)
        self.model.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach())}

    def profile(self, n: int, top: int) -> dict[str, Any]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                self.step()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        rows = [(e.key, e.self_cpu_time_total / n / 1e3, e.count // n) for e in events[:top]]
        return {"rows": rows, "total_ms": total / n / 1e3}


def worker_main(threads: int) -> None:
    w = Worker(threads)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        result = getattr(w, op)(**cmd)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# -- driver side ---------------------------------------------------------------------------
class Remote:
    def __init__(self, name: str, pythonpath: Path, threads: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=pythonpath,
        )

    def __call__(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def export(rev: str, dest: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "train", "aem_synth"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def compare(base_file: Path, new_file: Path) -> bool:
    """Print how far the new loss and gradients are from the base's; True when within tolerance.

    Tolerance: loss relative difference <= 1e-5 and, over all gradients taken
    as one vector, ||g_new - g_base|| / ||g_base|| <= 1e-4 (summation order
    alone moves fp32 gradients by about 1e-6 relative here).
    """
    import torch

    a, b = torch.load(base_file), torch.load(new_file)
    names = sorted(a["grads"])
    missing = sorted(set(a["grads"]) ^ set(b["grads"]))
    loss_rel = abs(float(a["loss"]) - float(b["loss"])) / abs(float(a["loss"]))
    ga = torch.cat([a["grads"][n].flatten().double() for n in names if n in b["grads"]])
    gb = torch.cat([b["grads"][n].flatten().double() for n in names if n in b["grads"]])
    grad_rel = float((gb - ga).norm() / ga.norm())
    ok = loss_rel <= 1e-5 and grad_rel <= 1e-4 and not missing
    print(
        f"  loss: base {float(a['loss']):.6f}, new {float(b['loss']):.6f} (relative {loss_rel:.1e})"
    )
    print(
        f"  gradients ({len(names)} tensors, {ga.numel():,} values): "
        f"||new - base|| / ||base|| = {grad_rel:.1e}; "
        + (f"gradient in one only: {missing}" if missing else "same parameters get gradients")
    )
    print(
        "  same outputs within fp32 tolerance (loss 1e-5, gradients 1e-4 relative): "
        + ("yes" if ok else "NO")
    )
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base", default=BASE_REV, help="git revision to compare against")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round and worker")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    args = p.parse_args()
    if args.worker:
        worker_main(args.threads)
        return
    print(
        f"demo-size step: RFNet base {BASE_CHANNELS}, batch {BATCH} x {CROP}^3, "
        f"{args.threads} thread(s), {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        base_dir = Path(tmp) / "base"
        base_dir.mkdir()
        export(args.base, base_dir)
        state = str(Path(tmp) / "init.pt")
        sides = {"base": Remote(f"base {args.base}", base_dir, args.threads)}
        print(f"  base: {sides['base']('init', state=state)['train']} (git {args.base})")
        sides["new"] = Remote("this tree", ROOT, args.threads)
        print(f"  new:  {sides['new']('init', state=state)['train']}")
        try:
            print("\nequivalence (one step from the same weights and batch):")
            for name, side in sides.items():
                side("check", out=str(Path(tmp) / f"{name}.pt"))
            compare(Path(tmp) / "base.pt", Path(tmp) / "new.pt")
            for side in sides.values():
                side("steps", n=2)  # warm-up
            times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in sides}
            for _ in range(args.rounds):
                for name, side in sides.items():
                    r = side("steps", n=args.steps)
                    times[name]["wall"] += r["wall"]
                    times[name]["cpu"] += r["cpu"]
            med = {
                n: {k: statistics.median(v) * 1e3 for k, v in t.items()} for n, t in times.items()
            }
            print(f"\nstep time, median of {args.rounds} alternating rounds x {args.steps} steps:")
            print(f"  {'':6s} {'wall ms':>9s} {'CPU ms':>9s}")
            for name in sides:
                print(f"  {name:6s} {med[name]['wall']:9.1f} {med[name]['cpu']:9.1f}")
            print(
                f"  speed-up new vs base: {med['base']['wall'] / med['new']['wall']:.2f}x wall, "
                f"{med['base']['cpu'] / med['new']['cpu']:.2f}x CPU"
            )
            if args.profile:
                for name, side in sides.items():
                    prof = side("profile", n=4, top=12)
                    print(
                        f"\nper-op profile, {name}: self CPU ms per step (all ops "
                        f"{prof['total_ms']:.0f} ms; calls per step)"
                    )
                    for key, ms, calls in prof["rows"]:
                        print(f"  {key:44s} {ms:8.1f} {calls:6d}")
        finally:
            for side in sides.values():
                side.close()


if __name__ == "__main__":
    main()
