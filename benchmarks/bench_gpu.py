"""GPU check (issue 14, part 6): RFNet training step against the public reference, evaluation time.

Printed side by side in one run, and written to ``--out`` (``bench_gpu.json``,
``bench_gpu.txt``):

* **our training step** at 80^3, batch 2, RFNet at the published width (base 16,
  4 classes): the step ``train run`` takes (``train.fit.loop.Trainer.train_step``
  of the ``train`` stage under ``pipelines/brats2020.toml``: forward, the
  segmentation objective with the paper's ``rfnet`` class weighting, finite check,
  backward, Adam/amsgrad), batches already on the device, in fp32 and bf16
  autocast, eager and with ``torch.compile`` (model and loss compiled, each
  compiled row in its own process, killed when the budget runs out; the first
  cycle of steps, which compiles, is timed and printed separately, with the
  graph count and graph-break reasons); plus bf16 with the GPU batch
  augmentation that ``train run`` also applies;
* **the reference step**: the published RFNet (``github.com/dyh127/RFNet``, copied
  by ``benchmarks/fetch_reference.py`` into an ignored folder, imported unchanged),
  trained as its ``train.py`` does: ``DataParallel`` model, all four modalities in
  the input, a per-sample random subset mask out of the 15 (its data set's draw),
  one-hot targets, weighted cross-entropy + Dice on the fused, the four
  per-modality and the four region-map outputs, Adam/amsgrad, the logged
  ``.item()`` values; fp32 with its cuDNN flags (``deterministic``, no
  ``benchmark``) and once more with ``cudnn.benchmark`` as ours runs;
* the ratio reference / ours for every row of ours (target: >= 2x), peak device memory;
* **15-subset evaluation of one BraTS-size case**: a 240x240x155 phantom, loaded and
  preprocessed as the build stores it, scored by ``train.inference.evaluate.evaluate_sample``
  (sliding window, Dice and HD95 for the 15 subsets) at the ``gpu`` ablation
  profile's settings (window 80^3, overlap 0.5, batch 2, bf16), RFNet base 16 with
  random weights; first and warm run, the prediction and the metrics apart, and
  the prediction with 5 subsets per decoder call.

Both steps see the same 8 batches in a cycle (random images, labels and
per-sample subset masks; ours gets the absent modalities zeroed, as our loader
does, the reference all four, as its loader does): one cycle of warm-up, then
``--cycles`` timed cycles, each step between two device synchronisations; the
medians are printed.  Data loading is timed in neither.

``--quick`` shrinks everything (16^3 crops, a 64x64x48 phantom, base 4 for the
evaluation, 32^3 windows; on CPU the compiled row is bf16 through dynamo's
``eager`` backend) for a CPU dry run of every code path.  ``--budget-s`` bounds
the run: compiled rows are skipped when less than ``--compile-reserve-s`` is
left and killed when the budget ends.  ``benchmarks/gpu_check.sh`` runs this
script on a lent GPU.

Run: ``python benchmarks/bench_gpu.py --out DIR [--device cuda] [--reference .reference/rfnet]``
(dry run: ``--device cpu --quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbones import PUBLISHED, WIDTHS, _sync
from bench_evaluate import time_encode_decode
from fetch_reference import FILES

from train.data.subsets import ALL_SUBSETS
from train.models import build_backbone, count_parameters

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "pipelines" / "brats2020.toml"
NUM_CLASSES = 4
PARTS = ("ours", "reference", "eval", "compile")


@dataclass(frozen=True)
class Sizes:
    crop: int = 80
    batch: int = 2
    cycle: int = 8  # distinct batches, repeated
    cycles: int = 3  # timed cycles
    eval_shape: tuple[int, int, int] = (240, 240, 155)
    eval_base: int = 16
    eval_window: int = 80


QUICK = Sizes(crop=16, cycle=2, cycles=1, eval_shape=(64, 64, 48), eval_base=4, eval_window=32)


class Report:
    """Prints lines and keeps them, with the results, under ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.data: dict[str, Any] = {"steps": [], "notes": []}

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.save()

    def save(self) -> None:
        (self.out / "bench_gpu.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "bench_gpu.json").write_text(json.dumps(self.data, indent=1, default=str))


# -- batches ------------------------------------------------------------------------------
def make_batches(sizes: Sizes, device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
    """``sizes.cycle`` batches: ours (absent modalities zeroed) and the reference's inputs."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    c, b = sizes.crop, sizes.batch
    out = []
    for _ in range(sizes.cycle):
        mask = torch.tensor([ALL_SUBSETS[int(k)] for k in rng.integers(0, 15, size=b)])
        image = torch.randn(b, 4, c, c, c, generator=g)
        label = torch.randint(0, NUM_CLASSES, (b, c, c, c), generator=g)
        onehot = F.one_hot(label, NUM_CLASSES).permute(0, 4, 1, 2, 3).float()
        ours = {"image": image * mask[:, :, None, None, None], "label": label, "mask": mask}
        out.append(
            {
                "ours": {k: v.to(device) for k, v in ours.items()},
                "ref": {
                    "x": image.to(device),
                    "target": onehot.to(device),
                    "mask": mask.to(device),
                },
            }
        )
    return out


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_steps(
    step: Callable[[dict[str, Any]], Any],
    batches: list[dict[str, Any]],
    key: str,
    device: torch.device,
    cycles: int,
) -> dict[str, Any]:
    """One warm-up cycle (timed as a whole: compile, autotuning), then ``cycles`` timed cycles."""
    _sync(device)
    t0 = time.perf_counter()
    for b in batches:
        step(b[key])
    _sync(device)
    first = time.perf_counter() - t0
    _reset_peak(device)
    times = []
    for _ in range(cycles):
        for b in batches:
            _sync(device)
            t0 = time.perf_counter()
            step(b[key])
            _sync(device)
            times.append(time.perf_counter() - t0)
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "steps": len(times),
        "first_cycle_s": first,
        "peak_gib": _peak_gib(device),
    }


# -- ours -----------------------------------------------------------------------------------
def our_trainer(
    sizes: Sizes, device: torch.device, precision: str, augment: bool, runs_dir: Path
) -> Any:
    """A ``Trainer`` of the ``train`` stage of the BraTS2020 recipe, batch and crop from ``sizes``."""
    from train.config_files import load_config
    from train.fit.distributed import DistInfo, place_model
    from train.fit.loop import StagePlan, Trainer
    from train.fit.stages import _objective, build_model

    c = sizes.crop
    cfg = load_config(
        RECIPE,
        [
            f"runs_dir={json.dumps(str(runs_dir))}",
            f"device={json.dumps(device.type)}",
            f"precision={json.dumps(precision)}",
            f"data.crop=[{c},{c},{c}]",
            f"stage.train.batch_size={sizes.batch}",
            f"augment.enabled={'true' if augment else 'false'}",
        ],
    )
    torch.manual_seed(cfg.seed)
    model = place_model(build_model(cfg), device)
    plan = StagePlan(
        stage="train",
        config=cfg,
        model=model,
        objective=_objective(cfg, "train", model),
        train_data=None,
        make_loader=lambda *a, **k: None,
    )
    return Trainer(plan, DistInfo(), device, progress=False)


def compile_trainer(trainer: Any, backend: str) -> None:
    """Compile the model and the segmentation loss the trainer calls (``torch.compile``)."""
    trainer.net = torch.compile(trainer.model, backend=backend)
    objective = trainer.plan.objective
    objective.seg_loss = torch.compile(objective.seg_loss, backend=backend)


# -- reference --------------------------------------------------------------------------------
def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_reference(folder: Path) -> None:
    """Stop with the command that copies the reference code when a file of it is missing."""
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise SystemExit(
            f"error: reference code missing in {folder}: {', '.join(missing)}; copy it with "
            "`python benchmarks/fetch_reference.py --mirror <clone of github.com/dyh127/RFNet>`"
        )


@functools.cache
def load_reference(folder: Path) -> tuple[ModuleType, ModuleType]:
    """The reference's ``models`` and ``criterions`` modules, imported from ``folder`` unchanged.

    Its ``models.py`` imports ``layers`` as a top-level module (its ``train.py``
    runs from its own folder): ``layers.py`` is registered under that name first.
    """
    check_reference(folder)
    if "layers" in sys.modules:
        raise SystemExit("error: another module named 'layers' is already imported")
    _load_module("layers", folder / "layers.py")
    models = _load_module("rfnet_reference_models", folder / "models.py")
    criterions = _load_module("rfnet_reference_criterions", folder / "utils" / "criterions.py")
    return models, criterions


class ReferenceStep:
    """The published training step of dyh127/RFNet ``train.py`` (fp32), on ``device``."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        models, self.crit = load_reference(folder.resolve())
        torch.manual_seed(1024)  # its default --seed
        self.model = torch.nn.DataParallel(models.Model(num_cls=NUM_CLASSES)).to(device)
        params = [{"params": self.model.parameters(), "lr": 1e-4, "weight_decay": 1e-4}]
        self.opt = torch.optim.Adam(params, betas=(0.9, 0.999), eps=1e-08, amsgrad=True)
        self.device = device
        self.params = sum(p.numel() for p in self.model.parameters())

    def _terms(self, preds: Any, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cross = torch.zeros(1, device=self.device)
        dice = torch.zeros(1, device=self.device)
        for p in preds:
            cross = cross + self.crit.softmax_weighted_loss(p, target, num_cls=NUM_CLASSES)
            dice = dice + self.crit.dice_loss(p, target, num_cls=NUM_CLASSES)
        return cross, dice

    def __call__(self, b: dict[str, torch.Tensor]) -> None:
        self.model.module.is_training = True
        fuse, seps, prms = self.model(b["x"], b["mask"])
        parts = [*self._terms([fuse], b["target"]), *self._terms(seps, b["target"])]
        parts += self._terms(prms, b["target"])
        loss = sum(parts[1:], parts[0])  # epochs >= region_fusion_start_epoch: all terms
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        for v in (loss, *parts):  # its logging reads every term with .item()
            v.item()


@contextlib.contextmanager
def cudnn_flags(benchmark: bool, deterministic: bool) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old


# -- the parts --------------------------------------------------------------------------------
def _row(rep: Report, name: str, precision: str, compiled: str, res: dict[str, Any]) -> None:
    row = {"name": name, "precision": precision, "compile": compiled, **res}
    rep.data["steps"].append(row)
    if "error" in res:
        rep.say(f"  {name} {precision} {compiled}: FAILED ({res['error']})")
        return
    peak = "n/a" if res["peak_gib"] is None else f"{res['peak_gib']:.2f} GiB"
    graphs = (
        f", {res['unique_graphs']} graphs, {res['graph_breaks']} graph breaks"
        if "unique_graphs" in res
        else ""
    )
    rep.say(
        f"  {name} {precision} {compiled}: {res['median_ms']:.1f} ms/step median "
        f"(min {res['min_ms']:.1f}, {res['steps']} steps), first cycle {res['first_cycle_s']:.1f} s, "
        f"peak {peak}{graphs}"
    )


def part_ours(rep: Report, sizes: Sizes, device: torch.device, batches: list, tmp: Path) -> None:
    variants = (("fp32", False), ("bf16", False), ("bf16", True))
    for precision, augment in variants:
        trainer = our_trainer(sizes, device, precision, augment, tmp)
        name = "ours + GPU augmentation" if augment else "ours"
        _row(
            rep,
            name,
            precision,
            "none",
            time_steps(trainer.train_step, batches, "ours", device, sizes.cycles),
        )
        del trainer


def compile_worker(sizes: Sizes, device: torch.device, precision: str, backend: str) -> None:
    """One compiled row in this process (run by :func:`part_compile` as a subprocess): JSON on stdout."""
    from torch._dynamo.utils import counters

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        trainer = our_trainer(sizes, device, precision, False, Path(tmp))
        try:
            compile_trainer(trainer, backend)
            res = time_steps(
                trainer.train_step, make_batches(sizes, device), "ours", device, sizes.cycles
            )
            res.update(
                unique_graphs=int(counters["stats"]["unique_graphs"]),
                graph_breaks=int(sum(counters["graph_break"].values())),
                graph_break_reasons=[k[:200] for k in counters["graph_break"]][:10],
            )
        except Exception as exc:  # compile failures are reported, not fatal
            traceback.print_exc()
            res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    print(json.dumps(res), flush=True)


def part_compile(rep: Report, sizes: Sizes, args: Any) -> None:
    """Each compiled row in its own process, killed when the budget runs out."""
    for precision in args.compile_precisions.split(","):
        left = args.deadline - time.perf_counter()
        name = f"compile:{args.compile_backend}"
        if left < args.compile_reserve_s:
            rep.say(f"  ours {precision} {name}: skipped, {left:.0f} s of the budget left")
            rep.data["notes"].append(f"compile {precision} skipped: {left:.0f} s left")
            continue
        cmd = [sys.executable, __file__, "--compile-worker", precision, "--out", str(args.out)]
        cmd += ["--device", args.device, "--compile-backend", args.compile_backend]
        cmd += ["--crop", str(sizes.crop), "--cycles", str(sizes.cycles)]
        cmd += ["--quick"] if args.quick else []
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=left, check=False)
            lines = proc.stdout.strip().splitlines()
            res = json.loads(lines[-1]) if lines else {"error": f"worker exit {proc.returncode}"}
        except subprocess.TimeoutExpired:
            res = {"error": f"not finished within the {left:.0f} s left of the budget (killed)"}
        except json.JSONDecodeError as exc:
            res = {"error": f"worker output not JSON: {exc}"}
        _row(rep, "ours", precision, name, res)
        reasons = dict.fromkeys(r.splitlines()[0][:160] for r in res.get("graph_break_reasons", []))
        for reason in reasons:
            rep.say(f"    graph break: {reason}")


def part_reference(
    rep: Report, sizes: Sizes, device: torch.device, batches: list, folder: Path
) -> None:
    for label, bench, det in (("published flags", False, True), ("cudnn.benchmark", True, False)):
        step = ReferenceStep(folder, device)
        rep.data["reference_params"] = step.params
        with cudnn_flags(bench, det):
            res = time_steps(step, batches, "ref", device, sizes.cycles)
        _row(rep, f"reference ({label})", "fp32", "none", res)
        del step


def _phantom_case(shape: tuple[int, int, int], tmp: Path) -> Any:
    """One phantom case of ``shape``, loaded and preprocessed as the build stores it."""
    from aem_synth.dataset.discover import discover_case
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import preprocess_case
    from aem_synth.phantom.generator import write_phantom_dataset

    folder = write_phantom_dataset(tmp / "phantom", n_cases=1, shape=shape)[0]
    case = preprocess_case(load_case(discover_case(folder)))
    if case.label is None:
        raise SystemExit(f"error: phantom case {folder} has no label")
    return case


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def part_eval(rep: Report, sizes: Sizes, device: torch.device, tmp: Path) -> None:
    from train.inference.evaluate import EvaluationOptions, evaluate_sample, predict_labels
    from train.inference.metrics import case_metrics
    from train.inference.sliding_window import WindowOptions, padded_shape, window_boxes

    case, prep_s = _timed(device, lambda: _phantom_case(sizes.eval_shape, tmp))
    torch.manual_seed(0)
    model = build_backbone("rfnet", num_classes=NUM_CLASSES, base_channels=sizes.eval_base)
    model = model.to(device).eval()
    w, amp = (sizes.eval_window,) * 3, device.type == "cuda"

    def opts(per_call: int = 0) -> Any:
        return EvaluationOptions(WindowOptions(w, 0.5, False, 2, amp, per_call), device=str(device))

    image, label, spacing = case.image, case.label, case.geometry.spacing
    runs = []
    for _ in range(2):  # first (autotuning) and warm
        _reset_peak(device)
        (recs, _, _), t = _timed(
            device, lambda: evaluate_sample(model, image, label, spacing, case.case_id, opts())
        )
        runs.append(t)
    peak = _peak_gib(device)
    preds, predict_s = _timed(device, lambda: predict_labels(model, image, opts()))
    _, metrics_s = _timed(device, lambda: [case_metrics(p, label, spacing) for p in preds.values()])
    _, predict5_s = _timed(device, lambda: predict_labels(model, image, opts(5)))
    enc, dec = time_encode_decode(model, sizes.eval_window, device)
    box = "x".join(map(str, image.shape[1:]))
    n_win = len(window_boxes(padded_shape(image.shape[1:], w), opts().window))
    rep.data["eval"] = {
        "case_shape": list(sizes.eval_shape),
        "brain_box": list(image.shape[1:]),
        "windows": n_win,
        "records": len(recs),
        "phantom_and_preprocess_s": prep_s,
        "first_s": runs[0],
        "warm_s": runs[1],
        "predict_s": predict_s,
        "metrics_s": metrics_s,
        "predict_5_subsets_per_call_s": predict5_s,
        "encode_window_s_fp32": enc,
        "decode_window_s_fp32": dec,
        "peak_gib": peak,
        "amp_bf16": amp,
        "base_channels": sizes.eval_base,
        "window": sizes.eval_window,
    }
    rep.say(
        f"  phantom {'x'.join(map(str, sizes.eval_shape))} -> brain box {box} ({prep_s:.1f} s "
        f"to make and preprocess); {n_win} windows of {sizes.eval_window}^3, overlap 0.5, batch 2, "
        f"{'bf16' if amp else 'fp32'}, RFNet base {sizes.eval_base} (random weights); "
        f"{len(recs)} subset records"
    )
    peak_s = "n/a" if peak is None else f"{peak:.2f} GiB"
    rep.say(
        f"  evaluate_sample (predict 15 subsets + Dice + HD95): first {runs[0]:.2f} s, "
        f"warm {runs[1]:.2f} s; apart: prediction {predict_s:.2f} s, Dice + HD95 "
        f"{metrics_s:.2f} s; peak {peak_s}"
    )
    rep.say(
        f"  prediction with 5 subsets per decoder call: {predict5_s:.2f} s "
        f"({predict_s / predict5_s:.2f}x the automatic choice); one window fp32: encode "
        f"{enc * 1e3:.1f} ms, decode {dec * 1e3:.1f} ms"
    )


# -- summary ---------------------------------------------------------------------------------
def summary(rep: Report) -> None:
    rows = [r for r in rep.data["steps"] if "error" not in r]
    refs = {r["name"]: r["median_ms"] for r in rows if r["name"].startswith("reference")}
    ours = [r for r in rows if r["name"].startswith("ours")]
    if not refs or not ours:
        return
    cols = sorted(refs, key=lambda c: "published" not in c)  # the published flags first
    rep.say("")
    rep.say(
        "| step | precision | compile | ms/step | peak GiB | first cycle s | "
        + " | ".join(f"speed-up vs {c}" for c in cols)
        + " |"
    )
    rep.say("|---|---|---|--:|--:|--:|" + "--:|" * len(cols))
    for r in rows:
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        ratios = " | ".join(f"{refs[c] / r['median_ms']:.2f}x" for c in cols)
        rep.say(
            f"| {r['name']} | {r['precision']} | {r['compile']} | {r['median_ms']:.1f} | {peak} | "
            f"{r['first_cycle_s']:.1f} | {ratios} |"
        )
    base = refs.get("reference (published flags)")
    if base:
        best = min(ours, key=lambda r: r["median_ms"])
        like = next((r for r in ours if r["precision"] == "fp32" and r["compile"] == "none"), None)
        rep.data["speedup_best"] = base / best["median_ms"]
        verdict = "met" if base / best["median_ms"] >= 2 else "NOT met"
        if rep.data["env"]["device"] == "cpu":
            verdict += " (CPU dry run: not a GPU figure)"
        rep.say(
            f"target >= 2x the reference (published flags): best of ours "
            f"({best['name']}, {best['precision']}, {best['compile']}) {base / best['median_ms']:.2f}x "
            f"-> {verdict}"
            + (f"; fp32 eager (like for like) {base / like['median_ms']:.2f}x" if like else "")
        )


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "cudnn_conv_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--reference", type=Path, default=ROOT / ".reference" / "rfnet")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    ap.add_argument(
        "--cycles", type=int, default=0, help="timed cycles of 8 batches (0: size default)"
    )
    ap.add_argument("--crop", type=int, default=0, help="training crop (0: 80, 16 with --quick)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip compile rows past this")
    ap.add_argument("--compile-reserve-s", type=float, default=100.0)
    ap.add_argument(
        "--compile-backend", default="", help="default inductor (eager: --quick on CPU)"
    )
    ap.add_argument("--compile-precisions", default="", help="default bf16,fp32 (bf16: --quick)")
    ap.add_argument("--compile-worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        raise SystemExit(f"error: unknown part(s) {unknown}; choose from {PARTS}")
    args.deadline = time.perf_counter() + args.budget_s
    sizes = QUICK if args.quick else Sizes()
    sizes = replace(sizes, cycles=args.cycles or sizes.cycles, crop=args.crop or sizes.crop)
    cpu_quick = args.quick and args.device == "cpu"
    args.compile_backend = args.compile_backend or ("eager" if cpu_quick else "inductor")
    args.compile_precisions = args.compile_precisions or ("bf16" if args.quick else "bf16,fp32")
    if "reference" in parts:
        check_reference(args.reference)  # fail before any timing
    from aem_synth.build.tuning import tune_allocator
    from train.fit.distributed import init_distributed

    tune_allocator()  # as `train run` does
    _, device = init_distributed(args.device, env={})  # cuDNN benchmark on CUDA, as `train run`
    if args.compile_worker:
        compile_worker(sizes, device, args.compile_worker, args.compile_backend)
        return
    rep = Report(args.out)
    rep.data.update(
        env=environment(device), sizes=asdict(sizes), args=vars(args) | {"deadline": None}
    )
    rep.say(f"bench_gpu: {json.dumps(rep.data['env'])}")
    rep.say(
        f"training step: RFNet base {WIDTHS['rfnet']}, {NUM_CLASSES} classes, {sizes.crop}^3, "
        f"batch {sizes.batch}; {sizes.cycle} batches with per-sample random modality subsets, "
        f"1 warm-up cycle, median of {sizes.cycles} timed cycle(s)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp_name:
        tmp = Path(tmp_name)
        batches = make_batches(sizes, device)
        if "ours" in parts:
            part_ours(rep, sizes, device, batches, tmp)
        if "reference" in parts:
            part_reference(rep, sizes, device, batches, args.reference)
            ours_n = count_parameters(build_backbone("rfnet", num_classes=NUM_CLASSES))
            diff = ours_n - rep.data["reference_params"]
            rep.say(
                f"  parameters: reference {rep.data['reference_params']:,}, ours {ours_n:,} "
                f"(documented difference {-PUBLISHED['rfnet'][1]:+,}, found {diff:+,})"
            )
        if "eval" in parts:
            rep.say("15-subset evaluation of one BraTS-size case (gpu profile settings):")
            part_eval(rep, sizes, device, tmp)
        if "compile" in parts:
            rep.say(f"torch.compile ({args.compile_backend}; model and loss; one process each):")
            part_compile(rep, sizes, args)
        summary(rep)
    rep.say(f"wrote {args.out / 'bench_gpu.txt'} and {args.out / 'bench_gpu.json'}")


if __name__ == "__main__":
    main()
