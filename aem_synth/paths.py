"""Output folders checked before any work starts.

A tool that writes into a folder (``build --out``, ``phantom --out``,
``predict --in ... --out``) calls :func:`prepare_output_dir` first, and one that
writes a label file (``predict --case ... --out``) :func:`prepare_output_file`,
so that a path that is a file, lies under a file, has a type that cannot be
written or cannot be written at all fails at once with a message naming it,
instead of with a traceback after minutes of work.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path

from aem_synth.errors import OutputPathError

__all__ = ["LABEL_SUFFIXES", "prepare_output_dir", "prepare_output_file", "temp_sibling"]

LABEL_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
"""Label-map file types ``write_label_like`` writes (NIfTI; ITK formats via SimpleITK)."""


def prepare_output_dir(path: Path | str, what: str = "output folder") -> Path:
    """Create ``path`` (with parents) if needed and check that files can be written in it.

    Raises
    ------
    OutputPathError
        ``path`` or one of its parents is an existing file, the folder cannot
        be created, or a file cannot be created in it (read-only, no permission).
    """
    path = Path(path)
    _check_not_under_a_file(path, what)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{what} {path} is not writable ({exc.strerror or exc})") from exc
    return path


def prepare_output_file(
    path: Path | str, suffixes: tuple[str, ...] = LABEL_SUFFIXES, what: str = "output file"
) -> Path:
    """Check that a file can be written at ``path`` (its folder is created if needed).

    Raises
    ------
    OutputPathError
        ``path`` is an existing folder, its name does not end in one of
        ``suffixes``, or its folder fails :func:`prepare_output_dir`.
    """
    path = Path(path)
    _check_not_under_a_file(path, what)
    if path.is_dir():
        raise OutputPathError(
            f"{what} {path} is a folder; give a file name ending in {suffixes[0]}"
        )
    if not path.name.lower().endswith(suffixes):
        raise OutputPathError(f"{what} {path}: the name must end in one of {', '.join(suffixes)}")
    prepare_output_dir(path.parent, f"folder of the {what}")
    return path


def _check_not_under_a_file(path: Path, what: str) -> None:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{what} {path} lies under {parent}, which is a file")


def temp_sibling(path: Path) -> Path:
    """The hidden temporary name a writer of ``path`` uses before renaming it into place.

    ``.<name>.tmp-<pid>-<host>``: workers of a cluster share the output folder, and
    processes on different hosts (containers especially) can have the same pid, so a
    worker wrongly declared dead and the worker rerunning its task never write one file.
    Build clean-ups match ``.*.tmp-*``.
    """
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{host}")
