"""``aem-synth`` command line: thin click commands that call one library function each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aem_synth import __version__
from aem_synth.errors import AemSynthError

LAYOUT_CHOICES = [
    "auto",
    "brats2015",
    "brats2018",
    "brats2019",
    "brats2020",
    "brats2021",
    "brats2023",
    "brats2024",
    "brats-ped",
    "msd",
    "nnunet",
]


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aem-synth")
def main() -> None:
    """Build AEM synthetic pre-training shards from a BraTS dataset."""
    from aem_synth.build.tuning import tune_allocator

    tune_allocator()


@main.command("inspect")
@click.option("--in", "root", required=True, type=click.Path(path_type=Path), help="Dataset root.")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(root: Path, layout: str, as_json: bool) -> None:
    """List every case: layout, modalities, shape, spacing, orientation, labels, problems."""
    from aem_synth.dataset.inspection import format_table, inspect_root

    try:
        rows = inspect_root(root, layout=None if layout == "auto" else layout)
    except AemSynthError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        click.echo(format_table(rows))


@main.command("phantom")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--cases", "n_cases", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--layout",
    type=click.Choice(["brats2020", "brats2023", "brats2015"]),
    default="brats2020",
    show_default=True,
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--shape",
    default="240,240,155",
    show_default=True,
    help="Volume shape X,Y,Z in voxels (1 mm).",
)
@click.option(
    "--variant",
    type=click.Choice(["simple", "hard"]),
    default="simple",
    show_default=True,
    help="hard: anatomy, site/intensity and tumour variety (see README).",
)
def phantom_cmd(out: Path, n_cases: int, layout: str, seed: int, shape: str, variant: str) -> None:
    """Write a procedural BraTS-like dataset in a real on-disk layout."""
    from aem_synth.phantom.generator import parse_shape, write_phantom_dataset

    try:
        paths = write_phantom_dataset(
            out,
            n_cases=n_cases,
            layout=layout,
            seed=seed,
            shape=parse_shape(shape),
            variant=variant,
        )
    except (AemSynthError, ValueError) as exc:
        _fail(exc)
    click.echo(f"wrote {len(paths)} {layout} {variant} phantom cases to {out}")


@main.command("build")
@click.option("--in", "root", required=True, type=click.Path(path_type=Path), help="Dataset root.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Shard store folder.")
@click.option(
    "--multiplier",
    default=4,
    show_default=True,
    type=click.IntRange(min=0),
    help="Synthetic samples per training case (AEM x N); 0 = real shards only.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--mode", type=click.Choice(["signed", "abs"]), default="signed", show_default=True)
@click.option("--method", type=click.Choice(["aem", "mixup"]), default="aem", show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Workers of the embedded cluster [default: CPU cores].",
)
@click.option(
    "--shard-size",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per shard.",
)
@click.option(
    "--splits",
    "splits_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of split files [default: seeded split, paper proportions].",
)
@click.option(
    "--scheduler",
    envvar="DASK_SCHEDULER_ADDRESS",
    default=None,
    help="Existing Dask scheduler address (env DASK_SCHEDULER_ADDRESS).",
)
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True)
@click.option(
    "--dataset",
    type=click.Choice(["brats2020", "brats2018", "brats2015"]),
    default=None,
    help="Split proportions [default: from the layout].",
)
@click.option("--strict", is_flag=True, help="Stop at the first case that cannot be used.")
@click.option("--codec", default=None, help="Shard codec [default: shards.DEFAULT_CODEC].")
@click.option(
    "--allow-incomplete", is_flag=True, help="Use cases with a missing modality for synthesis too."
)
@click.option("--diversity", is_flag=True, help="Allow mirroring tumours to the other hemisphere.")
@click.option("--keep-work", is_flag=True, help="Keep the per-case intermediates in OUT/.work.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a store built with another seed, splits or sample options at OUT.",
)
def build_cmd(
    root: Path,
    out: Path,
    multiplier: int,
    seed: int,
    mode: str,
    method: str,
    workers: int | None,
    shard_size: int,
    splits_dir: Path | None,
    scheduler: str | None,
    layout: str,
    dataset: str | None,
    strict: bool,
    codec: str | None,
    allow_incomplete: bool,
    diversity: bool,
    keep_work: bool,
    no_progress: bool,
    overwrite: bool,
) -> None:
    """Build (or resume) real and synthetic shards with Dask."""
    from aem_synth.build import BuildOptions, build
    from aem_synth.store.shards import DEFAULT_CODEC

    try:
        summary = build(
            BuildOptions(
                root=root,
                out=out,
                multiplier=multiplier,
                seed=seed,
                mode=mode,
                method=method,
                workers=workers,
                shard_size=shard_size,
                splits_dir=splits_dir,
                scheduler=scheduler,
                layout=None if layout == "auto" else layout,
                dataset=dataset,
                strict=strict,
                codec=codec or DEFAULT_CODEC,
                allow_incomplete=allow_incomplete,
                diversity=diversity,
                keep_work=keep_work,
                progress=not no_progress,
                overwrite=overwrite,
            )
        )
    except (AemSynthError, ValueError) as exc:
        _fail(exc)
    click.echo(summary.format())


@main.command("export-nnunet")
@click.option("--in", "root", required=True, type=click.Path(path_type=Path), help="Dataset root.")
@click.option(
    "--splits",
    "splits_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder with train.txt, val.txt, test.txt (e.g. SHARDS/splits).",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="New folder DatasetXXX_Name."
)
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True)
def export_nnunet_cmd(root: Path, splits_dir: Path, out: Path, layout: str) -> None:
    """Write the same cases and split in nnU-Net v2's raw format (splits_final.json fold 0)."""
    from aem_synth.dataset.export_nnunet import export_nnunet

    try:
        summary = export_nnunet(root, splits_dir, out, layout=None if layout == "auto" else layout)
    except (AemSynthError, OSError) as exc:
        _fail(exc)
    click.echo(summary.format())


@main.command("verify")
@click.argument("shards", type=click.Path(path_type=Path))
def verify_cmd(shards: Path) -> None:
    """Check checksums, store id, schema, shapes, label sets and split leakage of a store."""
    from aem_synth.store.verify import verify_store

    report = verify_store(shards)
    click.echo(report.format())
    if not report.ok:
        sys.exit(1)


@main.command("info")
@click.argument("shards", type=click.Path(path_type=Path))
@click.option(
    "--verify",
    "full",
    is_flag=True,
    help="Full check (SHA-256 of every shard, as `verify`) instead of the quick one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_cmd(shards: Path, full: bool, as_json: bool) -> None:
    """What a store holds: id, versions, dataset, options, seed, splits, samples, bytes, check.

    The default check reads no shard byte (store id, splits, every shard present
    with its recorded size); exits 1 when a check finds a problem, 2 when SHARDS
    is not a finished store.
    """
    from aem_synth.store.info import store_info

    try:
        info = store_info(shards, verify=full)
    except AemSynthError as exc:
        _fail(exc)
    click.echo(json.dumps(info.to_dict(), indent=1) if as_json else info.format())
    if not info.check.ok:
        sys.exit(1)


@main.command("preview")
@click.argument("shards", type=click.Path(path_type=Path))
@click.option("--sample", "sample_id", required=True, help="Synthetic sample id.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG to write.")
def preview_cmd(shards: Path, sample_id: str, out: Path) -> None:
    """Render a Fig.-4-style montage of one synthetic sample."""
    from aem_synth.store.preview import render_preview

    try:
        path = render_preview(shards, sample_id, out)
    except AemSynthError as exc:
        _fail(exc)
    click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
