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


# Commands are defined below this line: `run` (stages), `evaluate`, `predict`.


if __name__ == "__main__":  # pragma: no cover
    main()
