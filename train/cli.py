"""``train`` command line: thin click commands (run, evaluate, predict).

Heavy modules (torch, the model) are imported inside each command so that
``train --help`` is instant.
"""

from __future__ import annotations

import click

from aem_synth import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="train")
def main() -> None:
    """Train, evaluate and apply incomplete-modality brain-tumour segmentation models."""
    from aem_synth.build.tuning import tune_allocator

    tune_allocator()


# Commands are defined below this line: `run` (stages), `evaluate`, `predict`.

# --- run (issue 4) -----------------------------------------------------------------------------


@main.command("run")
@click.option(
    "--stage",
    required=True,
    type=click.Choice(["pretrain", "train", "posttrain"]),
    help="Stage to run (each starts from the previous stage's final.pt by default).",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML config. Default: the paper recipe of the dataset named in "
    "<shards>/manifest.json (pipelines/generic.toml when it names none).",
)
@click.option(
    "--shards",
    default=None,
    type=click.Path(file_okay=False),
    help="Shard store (default: ./shards without --config, the config's own with it).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, e.g. stage.train.epochs=3 or data.crop=[48,48,48] (repeatable).",
)
@click.option("--force", is_flag=True, help="Delete this stage's outputs and run it again.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def run_cmd(
    stage: str,
    config_path: str | None,
    shards: str | None,
    overrides: tuple[str, ...],
    force: bool,
    no_progress: bool,
) -> None:
    """Run (or resume after a kill) one training stage; outputs in runs_dir/name/<stage>/."""
    import logging

    from train.fit.stages import run_stage
    from train.recipes import resolve_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        resolved = resolve_config(config_path, overrides, shards)
        click.echo(resolved.describe())
        cfg = resolved.config
        result = run_stage(
            cfg,
            stage,
            force=force,
            progress=not no_progress,
            config_path=config_path or resolved.source,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        _fail_exit(exc)
    if result.status == "done":
        click.echo(
            f"stage {stage} is already done ({result.steps} steps): {result.final}; "
            "use --force to run it again"
        )
    else:
        click.echo(f"stage {stage} finished after {result.steps} steps: {result.final}")


# --- evaluate / predict (issue 5) ------------------------------------------------------------


def _inference_options(f: click.decorators.FC) -> click.decorators.FC:
    """Sliding-window options shared by `evaluate` and `predict`."""
    options = [
        click.option(
            "--window",
            default=None,
            type=click.IntRange(min=8),
            help="Cubic window size in voxels (multiple of 8); default: the training crop "
            "recorded in the checkpoint.",
        ),
        click.option(
            "--overlap",
            default=0.5,
            show_default=True,
            type=click.FloatRange(0.0, 1.0, max_open=True),
            help="Window overlap fraction.",
        ),
        click.option("--gaussian", is_flag=True, help="Gaussian importance weighting of windows."),
        click.option(
            "--batch-size",
            default=2,
            show_default=True,
            type=click.IntRange(min=1),
            help="Windows per forward pass.",
        ),
        click.option("--bf16", "amp", is_flag=True, help="bf16 autocast (CUDA only)."),
        click.option(
            "--et-postprocess",
            default=None,
            type=click.IntRange(min=1),
            metavar="N",
            help="Relabel ET as NCR/NET when a case has fewer than N ET voxels (off).",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="auto (CUDA when present), cpu or cuda[:n].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _fail_exit(exc: Exception) -> None:
    import sys

    click.echo(f"error: {one_line(exc)}", err=True)
    sys.exit(2)


def one_line(exc: Exception) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker (whose message
    holds the worker's whole traceback), the original error's own message only."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name, sep, message = last.partition(": ")
    return message if sep and "." in name and " " not in name else last


@main.command("evaluate")
@click.option(
    "--checkpoint",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Checkpoint (best.pt, final.pt, ...). Default: best.pt of the last stage that has "
    "one, in the run of --config (or of the default recipe of ./shards).",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Config whose run holds the checkpoint, when --checkpoint is not given.",
)
@click.option("--split", default="test", show_default=True, help="Real split of the shard store.")
@click.option(
    "--shards",
    default=None,
    type=click.Path(file_okay=False),
    help="Shard store (default: the one in the checkpoint's config).",
)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Output folder (default: <checkpoint folder>/eval-<split>).",
)
@_inference_options
def evaluate_cmd(
    checkpoint: str | None,
    config_path: str | None,
    split: str,
    shards: str | None,
    out_dir: str | None,
    **kw: object,
) -> None:
    """Dice and HD95 of WT/TC/ET over the 15 modality subsets; prints the paper's table."""
    from pathlib import Path

    from train.inference.evaluate import evaluate
    from train.recipes import latest_checkpoint, resolve_config

    try:
        if checkpoint is None:
            cfg = resolve_config(config_path, (), shards).config
            checkpoint = str(latest_checkpoint(cfg))
            click.echo(f"checkpoint: {checkpoint}")
        result = evaluate(
            Path(checkpoint),
            split=split,
            shards=Path(shards) if shards else None,
            out_dir=Path(out_dir) if out_dir else None,
            warn=lambda note: click.echo(f"warning: {note}", err=True),
            **kw,  # type: ignore[arg-type]
        )
    except (ValueError, RuntimeError, OSError) as exc:
        _fail_exit(exc)
    for line in result.stores:
        click.echo(line)
    click.echo(result.markdown)
    for name, path in result.files.items():
        click.echo(f"wrote {name}: {path}")


@main.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--case",
    default=None,
    type=click.Path(file_okay=False),
    help="One patient folder (any layout, any non-empty set of modalities).",
)
@click.option(
    "--in",
    "root",
    default=None,
    type=click.Path(file_okay=False),
    help="A folder of patients; one <case_id>_seg.nii.gz each in --out.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Output file (.nii.gz, or .mha for BraTS 2015) with --case; folder with --in.",
)
@click.option(
    "--layout",
    default="auto",
    show_default=True,
    help="Force a layout (brats2015/2018-2021/2023/2024, brats-ped, msd, nnunet).",
)
@_inference_options
def predict_cmd(case: str | None, root: str | None, layout: str, **kw: object) -> None:
    """Segment patients with whatever modalities they have, in their original grid and labels."""
    from pathlib import Path

    from aem_synth.dataset.background import describe_background
    from train.inference.predict import FolderPrediction, describe_mask, predict

    try:
        outcome = predict(
            case=Path(case) if case else None,
            root=Path(root) if root else None,
            layout=None if layout == "auto" else layout,
            **kw,  # type: ignore[arg-type]
        )
    except (ValueError, RuntimeError, OSError) as exc:
        _fail_exit(exc)
    results = outcome.results if isinstance(outcome, FolderPrediction) else [outcome]
    for r in results:
        click.echo(
            f"{r.case_id}: {describe_mask(r.mask)}; wrote {r.out_path} labels {r.label_counts}"
        )
        if r.background and describe_background(r.background) != "0":
            click.echo(f"  background outside the head: {describe_background(r.background)}")
    if isinstance(outcome, FolderPrediction):
        for f in outcome.failures:
            click.echo(f"skipped {f.case}: {f.reason}", err=True)
        click.echo(f"{len(outcome.results)} case(s) predicted, {len(outcome.failures)} skipped")
        if not outcome.results:
            raise SystemExit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
