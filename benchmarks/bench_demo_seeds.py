"""The demo recipe's test Dice over training seeds, for one or more revisions of the code.

One demo training (``pipelines/demo.toml``: pretrain, train, posttrain, then
``train evaluate`` of posttrain's ``best.pt`` on the test split) is one draw:
650 steps at lr 1e-2 turn any change of fp32 round-off, or of the seed, into
another trajectory.  Whether a change of the numerics (a faster kernel, a
fused optimiser) changes what the recipe learns is therefore a question about
the distribution over seeds, not about one run.  This script trains the recipe
with every ``--seeds`` value for every ``--revs`` revision, on one store, and
prints the 15-subset average test Dice (WT / TC / ET, %) per seed, the mean
and standard deviation per revision, and each revision's paired difference
against the first (same seed) with a paired t-test.

A revision is a git revision, unpacked with ``git archive`` into ``--work``,
or ``.`` for this working tree.  The store is built as the demo builds it
(30 phantom cases at 96x96x64, ``--multiplier 4``, seed 0) unless ``--store``
names one.  Finished runs are reused, so a killed comparison resumes (those of
the working tree only while it has no uncommitted changes).  Each run
takes ~5 min on 2 cores; run it alone, one run at a time (two at once
oversubscribe the cores and take 3-6x as long).

Run: ``python benchmarks/bench_demo_seeds.py --revs 0766f48 . --seeds 0 1 2 3
[--work /tmp/demo_seeds] [--store DIR]``
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from scipy import stats

from pipelines.demo import STAGES, build_args, evaluate_args, phantom_args, stage_args

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("WT", "TC", "ET")


def code_dir(rev: str, work: Path) -> Path:
    """The source tree of ``rev``: this working tree for ``.``, else ``git archive`` of it."""
    if rev == ".":
        return ROOT
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dest = work / "code" / sha
    if not (dest / "pipelines" / "demo.toml").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        archive = work / "code" / f"{sha}.tar"
        subprocess.run(["git", "archive", "-o", str(archive), sha], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        archive.unlink()
    return dest


def tree_name() -> tuple[str, bool]:
    """The run name of this working tree (``tree-<HEAD>``, ``-dirty`` with uncommitted changes
    to tracked files) and whether its finished runs may be reused (not when dirty: the tree
    may have changed since they ran)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return f"tree-{git('rev-parse', '--short=12', 'HEAD')}{'-dirty' if dirty else ''}", not dirty


def demo_store(work: Path) -> Path:
    """The demo's store (phantoms, seed 0, ``--multiplier 4``), built once under ``work``."""
    store = work / "store"
    if not (store / "manifest.json").is_file():
        data = work / "phantom"
        cli = [sys.executable, "-m", "aem_synth.cli"]
        if not (data / "phantom.json").is_file():
            subprocess.run([*cli, *phantom_args(data, 30, "96,96,64", 0)], cwd=ROOT, check=True)
        subprocess.run([*cli, *build_args(data, store, 2, 0)], cwd=ROOT, check=True)
    return store


def average_dice(csv_path: Path) -> tuple[float, float, float]:
    """The ``Average`` row of an evaluation's ``dice.csv``: WT, TC, ET in %."""
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["subset"] == "Average":
                return tuple(float(row[f"dice_{r}_%"]) for r in REGIONS)  # type: ignore[return-value]
    raise ValueError(f"{csv_path}: no Average row")


def train_and_evaluate(
    code: Path, store: Path, out: Path, seed: int, *, reuse: bool = True
) -> tuple[float, ...]:
    """The demo recipe with ``seed`` using the code in ``code``; returns the test average Dice.

    A finished run in ``out`` is reused when ``reuse``; otherwise ``out`` is cleared first."""
    result = out / "eval" / "dice.csv"
    if reuse and result.is_file():
        return average_dice(result)
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    # The code folder first on the path and as the working folder (which precedes PYTHONPATH).
    env = {**os.environ, "PYTHONPATH": str(code)}
    train = [sys.executable, "-m", "train.cli"]
    config = code / "pipelines" / "demo.toml"
    out.mkdir(parents=True, exist_ok=True)
    steps = [(st, [*stage_args(st, config, store, out, seed), "--no-progress"]) for st in STAGES]
    for name, args in [*steps, ("evaluate", evaluate_args(out, store, out / "eval"))]:
        with (out / f"{name}.log").open("w") as log:
            subprocess.run(
                [*train, *args],
                cwd=code,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
    return average_dice(result)


def _fmt(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:6.2f}" for v in values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--revs", nargs="+", default=["."], help="git revisions; '.' = this tree")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--work", type=Path, default=Path("/tmp/demo_seeds"))
    p.add_argument("--store", type=Path, default=None, help="a demo store (default: build one)")
    args = p.parse_args()
    work: Path = args.work.resolve()
    store = (args.store or demo_store(work)).resolve()
    codes = {rev: code_dir(rev, work) for rev in args.revs}
    tree, tree_reusable = tree_name()
    scores: dict[tuple[str, int], tuple[float, ...]] = {}
    for seed in args.seeds:
        for rev, code in codes.items():
            t0 = time.perf_counter()
            name, reuse = (tree, tree_reusable) if rev == "." else (code.name, True)
            out = work / "runs" / f"{name}-s{seed}"
            scores[rev, seed] = train_and_evaluate(code, store, out, seed, reuse=reuse)
            print(
                f"  {rev} seed {seed}: {_fmt(scores[rev, seed])} ({time.perf_counter() - t0:.0f} s)"
            )

    print(f"\nstore {store}; test split, 15-subset average Dice % (WT TC ET)")
    print("seed  " + "  ".join(f"{rev:^20.20}" for rev in args.revs))
    for seed in args.seeds:
        print(f"{seed:4d}  " + "  ".join(_fmt(scores[rev, seed]) for rev in args.revs))
    for rev in args.revs:
        columns = list(zip(*(scores[rev, s] for s in args.seeds), strict=True))
        spread = (
            " ".join(f"{statistics.mean(c):.2f} ± {statistics.stdev(c):.2f}" for c in columns)
            if len(args.seeds) > 1
            else _fmt(tuple(c[0] for c in columns))
        )
        print(f"{rev}: mean ± sd over {len(args.seeds)} seeds  {spread}")
    first = args.revs[0]
    for rev in args.revs[1:]:
        for i, region in enumerate(REGIONS):
            a = [scores[first, s][i] for s in args.seeds]
            b = [scores[rev, s][i] for s in args.seeds]
            diffs = [y - x for x, y in zip(a, b, strict=True)]
            line = f"{rev} - {first} {region}: paired mean {statistics.mean(diffs):+.2f}"
            line += f", lower on {sum(d < 0 for d in diffs)} of {len(diffs)} seeds"
            if len(diffs) > 1:
                line += f", paired t-test p = {stats.ttest_rel(b, a).pvalue:.2f}"
            print(line)


if __name__ == "__main__":
    main()
