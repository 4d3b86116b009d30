"""Symmetry calibration: accuracy on phantoms with known planes, and real-case Dice.

Usage: ``python benchmarks/bench_calibration.py [--phantoms 10] [--samples DIR] [--small 10]``

(a) ``--phantoms`` BraTS-size (240 x 240 x 155) phantoms from
    :func:`aem_synth.phantom.generator.make_phantom_case`, whose planes are drawn with
    offsets in +-4 voxels and yaw/roll in +-5 degrees: true versus found plane,
    offset error at the array centre (voxels), normal angle error (degrees),
    seconds; then medians.
(b) The real cases under ``--samples`` (default ``../shared/brats_samples``):
    NIfTI reoriented with ``nibabel.as_closest_canonical``, brain mask = any
    modality > 0; brain-mask Dice under the plain flip and under the
    calibrated plane, and seconds.
(c) Small grids (the sizes tests and demos use): ``--small`` phantoms each at
    48 x 48 x 32 and 64 x 64 x 40, median errors and median / max CPU seconds,
    to show that the cost shrinks with the volume.

One thread (OMP/MKL/OPENBLAS set to 1 before numpy/scipy are imported).
Seconds: wall time of the calibration alone (not the loading), and its CPU
time (``time.process_time``), which is the fairer figure on a shared machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from aem_synth.synthesis.calibrate import Calibration, calibrate, plane_errors  # noqa: E402
from aem_synth.synthesis.mirror import MirrorPlane  # noqa: E402


def _fmt(p: MirrorPlane) -> str:
    return f"{p.offset:+6.2f} {p.yaw:+6.2f} {p.roll:+6.2f}"


def _timed(
    mask: np.ndarray, spacing: tuple[float, float, float], case_id: str
) -> tuple[Calibration, float]:
    cpu = time.process_time()
    result = calibrate(mask, spacing, case_id=case_id)
    return result, time.process_time() - cpu


def phantom_table(n: int, seed0: int) -> None:
    from aem_synth.phantom.generator import make_phantom_case

    print(f"(a) phantoms 240x240x155, n={n} (plane: offset vox, yaw deg, roll deg)")
    print(
        f"{'seed':>5}  {'true plane':<22}{'found plane':<22}{'off err':>8}{'ang err':>8}"
        f"{'wall s':>8}{'cpu s':>7}"
    )
    errs, angs, secs, cpus = [], [], [], []
    for seed in range(seed0, seed0 + n):
        case = make_phantom_case(seed)
        true = MirrorPlane(**case.plane)
        result, cpu = _timed(case.brain_mask, (1.0, 1.0, 1.0), f"phantom{seed}")
        off, ang = plane_errors(result.plane, true)
        errs.append(off)
        angs.append(ang)
        secs.append(result.seconds)
        cpus.append(cpu)
        print(
            f"{seed:>5}  {_fmt(true):<22}{_fmt(result.plane):<22}{off:>8.3f}{ang:>8.3f}"
            f"{result.seconds:>8.2f}{cpu:>7.2f}"
        )
    print(
        f"median offset error {statistics.median(errs):.3f} voxel, "
        f"median angle error {statistics.median(angs):.3f} deg, "
        f"wall median {statistics.median(secs):.2f} s (max {max(secs):.2f}), "
        f"cpu median {statistics.median(cpus):.2f} s (max {max(cpus):.2f}) per case"
    )


def small_table(n: int, seed0: int) -> None:
    from aem_synth.phantom.generator import make_phantom_case

    print(f"(c) small phantoms, n={n} per grid")
    print(f"{'grid':<12}{'med off err':>12}{'med ang err':>12}{'cpu med s':>10}{'cpu max s':>10}")
    for shape in ((48, 48, 32), (64, 64, 40)):
        errs, angs, cpus = [], [], []
        for seed in range(seed0, seed0 + n):
            case = make_phantom_case(seed, shape)
            result, cpu = _timed(case.brain_mask, (1.0, 1.0, 1.0), f"phantom{seed}")
            off, ang = plane_errors(result.plane, MirrorPlane(**case.plane))
            errs.append(off)
            angs.append(ang)
            cpus.append(cpu)
        print(
            f"{'x'.join(map(str, shape)):<12}{statistics.median(errs):>12.3f}"
            f"{statistics.median(angs):>12.3f}{statistics.median(cpus):>10.3f}{max(cpus):>10.3f}"
        )


def _real_mask(case: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    mask, spacing = None, (1.0, 1.0, 1.0)
    for f in sorted(case.glob("*.nii*")):
        if "seg" in f.name.lower():
            continue
        img = nib.as_closest_canonical(nib.load(f))
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])  # type: ignore[assignment]
        present = np.asarray(img.dataobj) > 0
        mask = present if mask is None else mask | present
    if mask is None:
        raise ValueError(f"{case}: no image files found")
    return mask, spacing


def real_table(samples: Path) -> None:
    cases = sorted(p for p in samples.iterdir() if p.is_dir())
    print(f"(b) real cases in {samples}")
    print(
        f"{'case':<24}{'dice flip':>10}{'dice plane':>11}  {'plane':<22}{'wall s':>8}{'cpu s':>7}"
    )
    for case in cases:
        mask, spacing = _real_mask(case)
        r, cpu = _timed(mask, spacing, case.name)
        print(
            f"{case.name:<24}{r.dice_flip:>10.4f}{r.dice_plane:>11.4f}  {_fmt(r.plane):<22}"
            f"{r.seconds:>8.2f}{cpu:>7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--small", type=int, default=10, help="phantoms per small grid")
    default = Path(__file__).resolve().parents[2] / "shared" / "brats_samples"
    parser.add_argument("--samples", type=Path, default=default)
    args = parser.parse_args()
    phantom_table(args.phantoms, args.first_seed)
    print()
    if args.samples.is_dir():
        real_table(args.samples)
    else:
        print(f"(b) skipped: {args.samples} not found")
    print()
    small_table(args.small, args.first_seed)


if __name__ == "__main__":
    main()
