"""End-to-end demo on built-in phantom data, CPU only.

phantom dataset (30 cases: 18 train, 4 val, 8 test) -> ``aem-synth build
--multiplier 4`` -> ``aem-synth verify`` -> preview PNG -> ``train run`` pretrain /
train / posttrain (full-volume validation, ``best.pt``) -> ``train evaluate`` of
posttrain's ``best.pt`` on the test split (15-subset table and figure).  Every step is the same command a user types, called
in-process; a re-run resumes (finished steps are skipped by the tools).

Usage::

    python -m pipelines.demo --out demo_out [--cases 30] [--shape 96,96,64]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

CONFIG = Path(__file__).with_name("demo.toml")
STAGES = ("pretrain", "train", "posttrain")


def _step(title: str, group: click.Group, prog: str, args: Sequence[str]) -> None:
    click.secho(f"\n== {title}: {prog} {' '.join(args)}", bold=True)
    t0 = time.perf_counter()
    try:
        group.main(list(args), prog_name=prog, standalone_mode=False)
    except SystemExit as exc:  # a command signalled failure with an exit code
        if exc.code not in (0, None):
            raise click.ClickException(f"step '{title}' failed with exit code {exc.code}") from exc
    click.echo(f"   ({time.perf_counter() - t0:.1f} s)")


def phantom_args(data: Path, cases: int, shape: str, seed: int) -> list[str]:
    """``aem-synth`` arguments of the demo's phantom dataset."""
    args = ["phantom", "--out", str(data), "--cases", str(cases), "--layout", "brats2020"]
    return [*args, "--seed", str(seed), "--shape", shape]


def build_args(data: Path, shards: Path, workers: int, seed: int) -> list[str]:
    """``aem-synth`` arguments of the demo's AEM x4 build."""
    args = ["build", "--multiplier", "4", "--in", str(data), "--out", str(shards)]
    return [*args, "--workers", str(workers), "--seed", str(seed)]


def stage_args(stage: str, config: Path, shards: Path, runs: Path, seed: int) -> list[str]:
    """``train`` arguments of one demo stage (``config``: the demo's TOML)."""
    sets = ["--set", f"shards={shards}", "--set", f"runs_dir={runs}", "--set", f"seed={seed}"]
    return ["run", "--stage", stage, "--config", str(config), *sets]


def evaluate_args(runs: Path, shards: Path, out: Path) -> list[str]:
    """``train evaluate`` arguments of the demo's test evaluation of posttrain's ``best.pt``
    (the best full-volume validation score)."""
    ckpt = runs / "demo" / "posttrain" / "best.pt"
    args = ["evaluate", "--checkpoint", str(ckpt), "--split", "test"]
    return [*args, "--shards", str(shards), "--out", str(out)]


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
@click.option("--cases", default=30, show_default=True, type=click.IntRange(min=6))
@click.option("--shape", default="96,96,64", show_default=True, help="Phantom volume shape X,Y,Z.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
def main(out: Path, cases: int, shape: str, workers: int, seed: int) -> None:
    """Run the whole pipeline on phantom data and print the 15-subset table."""
    from aem_synth.cli import main as aem
    from train.cli import main as trainer

    data, shards, runs = out / "phantom", out / "shards", out / "runs"
    t0 = time.perf_counter()
    if not (data / "phantom.json").is_file():
        _step("phantom data", aem, "aem-synth", phantom_args(data, cases, shape, seed))
    _step("inspect", aem, "aem-synth", ["inspect", "--in", str(data)])
    _step("AEM x4 build", aem, "aem-synth", build_args(data, shards, workers, seed))
    _step("verify", aem, "aem-synth", ["verify", str(shards)])
    sample = _first_synthetic_sample(shards)
    _step(
        "preview",
        aem,
        "aem-synth",
        ["preview", str(shards), "--sample", sample, "--out", str(out / "preview.png")],
    )
    for stage in STAGES:
        _step(f"{stage} stage", trainer, "train", stage_args(stage, CONFIG, shards, runs, seed))
    _validation_summary(runs / "demo", out / "validation.png")
    _step(
        "evaluate (test split, 15 subsets)",
        trainer,
        "train",
        evaluate_args(runs, shards, out / "evaluation"),
    )
    click.secho(
        f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/", bold=True
    )


def _validation_summary(run: Path, png: Path) -> None:
    """Print full-volume validation Dice against steps and draw it to ``png``."""
    from train.report.plots import plot_validation_history, validation_history

    stages = {s: run / s / "metrics.csv" for s in ("pretrain", "train", "posttrain")}
    click.secho(
        "\n== validation Dice (%) against steps (2 validation cases, full volumes)", bold=True
    )
    click.echo("stage      step   WT all  TC all  ET all | WT 15-mean  TC 15-mean  ET 15-mean")
    for h in validation_history(stages):
        cols = ("val_wt_all", "val_tc_all", "val_et_all", "val_wt", "val_tc", "val_et")
        v = [100 * float(h[c]) for c in cols]
        click.echo(
            f"{h['stage']:<9} {h['step']:>5}   {v[0]:6.2f}  {v[1]:6.2f}  {v[2]:6.2f} |"
            f"      {v[3]:6.2f}      {v[4]:6.2f}      {v[5]:6.2f}"
        )
    if plot_validation_history(stages, png, "demo: full-volume validation Dice"):
        click.echo(f"wrote {png}")


def _first_synthetic_sample(shards: Path) -> str:
    from aem_synth.store.shards import list_samples

    refs = list_samples(shards, "synthetic")
    if not refs:
        raise click.ClickException(f"{shards}: the build wrote no synthetic samples")
    return refs[0].sample_id


if __name__ == "__main__":
    sys.exit(main())
