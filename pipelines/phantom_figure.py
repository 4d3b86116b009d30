"""Figure: real BraTS cases next to ``hard`` and ``simple`` phantoms, same slice layout.

One row per case: FLAIR, T1, T1ce, T2 (z-scores over the brain, 1-99 % window) and
the labels on FLAIR, through the axial slice with the most tumour.

Usage::

    python -m pipelines.phantom_figure --out docs/phantoms_vs_brats.png [--brats ../shared/brats_samples]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--brats", type=click.Path(path_type=Path), default=None, help="Real BraTS cases.")
@click.option("--hard", "n_hard", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--shape", default="160,160,110", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--dpi", default=80, show_default=True, type=click.IntRange(min=20))
def main(out: Path, brats: Path | None, n_hard: int, shape: str, seed: int, dpi: int) -> None:
    """Write the comparison figure."""
    from aem_synth.dataset.discover import discover
    from aem_synth.dataset.load import load_case
    from aem_synth.dataset.preprocess import preprocess_case
    from aem_synth.phantom.generator import parse_shape, write_phantom_dataset
    from train.report.figures import plot_case_grid

    cases = []

    def add(root: Path, prefix: str, limit: int) -> None:
        for record in discover(root)[:limit]:
            pre = preprocess_case(load_case(record, require_label=True))
            assert pre.label is not None
            cases.append((f"{prefix} {record.case_id}", pre.image, pre.label))

    if brats is not None:
        add(brats, "BraTS", 3)
    with tempfile.TemporaryDirectory() as tmp:
        write_phantom_dataset(
            Path(tmp) / "hard", n_cases=n_hard, seed=seed, shape=parse_shape(shape), variant="hard"
        )
        write_phantom_dataset(Path(tmp) / "simple", n_cases=1, seed=seed, shape=parse_shape(shape))
        add(Path(tmp) / "hard", "hard", n_hard)
        add(Path(tmp) / "simple", "simple", 1)
    plot_case_grid(cases, out, "real BraTS, hard phantoms, simple phantom", dpi=dpi)
    from PIL import Image

    # A 128-colour palette keeps the figure small enough for the repository's README.
    with Image.open(out) as img:
        img.convert("RGB").quantize(colors=128).save(out, optimize=True)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
