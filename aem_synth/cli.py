"""``aem-synth`` command line: thin click commands that call one library function each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aem_synth import __version__
from aem_synth.errors import AemSynthError

LAYOUT_CHOICES = ["auto", "brats2015", "brats2018", "brats2019", "brats2020", "brats2021", "brats2023"]


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aem-synth")
def main() -> None:
    """Build AEM synthetic pre-training shards from a BraTS dataset."""


@main.command("inspect")
@click.option("--in", "root", required=True, type=click.Path(path_type=Path), help="Dataset root.")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(root: Path, layout: str, as_json: bool) -> None:
    """List every case: layout, modalities, shape, spacing, orientation, labels, problems."""
    from aem_synth.inspection import format_table, inspect_root

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
    "--layout", type=click.Choice(["brats2020", "brats2023", "brats2015"]), default="brats2020",
    show_default=True,
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--shape", default="240,240,155", show_default=True,
    help="Volume shape X,Y,Z in voxels (1 mm).",
)
def phantom_cmd(out: Path, n_cases: int, layout: str, seed: int, shape: str) -> None:
    """Write a procedural BraTS-like dataset in a real on-disk layout."""
    from aem_synth.phantom import parse_shape, write_phantom_dataset

    try:
        paths = write_phantom_dataset(
            out, n_cases=n_cases, layout=layout, seed=seed, shape=parse_shape(shape)
        )
    except (AemSynthError, ValueError) as exc:
        _fail(exc)
    click.echo(f"wrote {len(paths)} {layout} phantom cases to {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
