"""Which config and checkpoint to use when the user names none.

``train run --stage pretrain`` in a folder where ``aem-synth build ... --out
shards/`` has run takes the paper recipe of the dataset the store was built
from (``pipelines/<dataset>.toml``), read from ``shards/manifest.json``, or the
generic recipe (``pipelines/generic.toml``) when the dataset is not one the
paper trains on.  The recipe's ``shards`` and ``runs_dir`` are replaced by the
store given and ``runs`` in the working directory.  ``train evaluate`` without
``--checkpoint`` takes the best checkpoint of the last stage that has one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from train.config import STAGES, Config, ConfigError
from train.config_files import load_config

__all__ = [
    "DEFAULT_SHARDS",
    "RECIPES",
    "ResolvedConfig",
    "dataset_of_store",
    "latest_checkpoint",
    "recipe_path",
    "resolve_config",
]

DEFAULT_SHARDS = "shards"
DEFAULT_RUNS = "runs"
RECIPES: tuple[str, ...] = ("brats2015", "brats2018", "brats2020")
"""Datasets with a paper recipe in ``pipelines/``; any other store gets ``generic``."""
GENERIC = "generic"
# Case-id prefixes of the BraTS releases that share the 2018-2021 file layout.
_ID_PREFIXES = {"BraTS20_": "brats2020", "Brats18_": "brats2018"}


@dataclass(frozen=True)
class ResolvedConfig:
    """A config and where it came from (printed by ``train run``).

    Attributes
    ----------
    config : Config
    source : str
        The recipe or file it was read from.
    reason : str
        Why that file (e.g. ``dataset brats2020 from shards/manifest.json``).
    """

    config: Config
    source: str
    reason: str

    def describe(self) -> str:
        c = self.config
        return (
            f"config: {self.source} ({self.reason}); name={c.name} shards={c.shards} "
            f"runs_dir={c.runs_dir} device={c.device}"
        )


def dataset_of_store(shards: Path | str) -> tuple[str | None, str]:
    """The dataset a shard store was built from, and how it was told.

    Order: the build's ``--dataset``; the BraTS 2015 layout; the case-id
    prefix shared by every case (``BraTS20_`` 2020, ``Brats18_`` 2018).
    ``(None, reason)`` when none of them says.

    Raises
    ------
    ConfigError
        ``shards/manifest.json`` is missing or unreadable.
    """
    manifest = Path(shards) / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(
            f"{manifest} not found: give --config FILE, or run where `aem-synth build ... "
            f"--out {shards}` has finished (or pass --shards DIR)"
        )
    try:
        doc: dict[str, Any] = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{manifest}: unreadable manifest ({exc})") from exc
    named = (doc.get("options") or {}).get("dataset")
    if named:
        return str(named), f"dataset {named} from {manifest} (build --dataset)"
    layouts = (doc.get("dataset") or {}).get("layouts") or []
    if layouts == ["brats2015"]:
        return "brats2015", f"BraTS 2015 layout in {manifest}"
    cases = list(doc.get("cases") or [])
    for prefix, name in _ID_PREFIXES.items():
        if cases and all(str(c).startswith(prefix) for c in cases):
            return name, f"case ids {prefix}* in {manifest}"
    return None, f"dataset not recognised from {manifest}"


@contextlib.contextmanager
def recipe_path(name: str) -> Iterator[Path]:
    """Path of the packaged recipe ``pipelines/<name>.toml`` (valid inside the ``with``)."""
    ref = resources.files("pipelines").joinpath(f"{name}.toml")
    if not ref.is_file():
        raise ConfigError(f"no packaged recipe pipelines/{name}.toml")
    with resources.as_file(ref) as path:
        yield path


def resolve_config(
    config_path: str | Path | None,
    overrides: Sequence[str] = (),
    shards: str | Path | None = None,
) -> ResolvedConfig:
    """The config of a ``train`` command.

    Parameters
    ----------
    config_path : path or None
        ``--config``; ``None`` picks the recipe from the store's manifest.
    overrides : sequence of str
        ``--set`` values, applied last.
    shards : path or None
        ``--shards``: the store (default ``shards`` without ``--config``, the
        config's own with it).
    """
    if config_path is not None:
        pre = [f"shards={json.dumps(str(shards))}"] if shards is not None else []
        cfg = load_config(config_path, [*pre, *overrides])
        return ResolvedConfig(cfg, str(config_path), "--config")
    store = Path(shards) if shards is not None else Path(DEFAULT_SHARDS)
    dataset, reason = dataset_of_store(store)
    name = dataset if dataset in RECIPES else GENERIC
    base = [f"shards={json.dumps(str(store))}", f"runs_dir={json.dumps(DEFAULT_RUNS)}"]
    with recipe_path(name) as path:
        cfg = load_config(path, [*base, *overrides])
    return ResolvedConfig(cfg, f"pipelines/{name}.toml", reason)


def latest_checkpoint(cfg: Config) -> Path:
    """``best.pt`` of the last stage that has one (posttrain, train, pretrain), else its ``final.pt``.

    Raises
    ------
    ConfigError
        No stage of ``cfg`` has a checkpoint yet.
    """
    for stage in reversed(STAGES):
        folder = cfg.stage_dir(stage)
        for name in ("best.pt", "final.pt"):
            if (folder / name).is_file():
                return folder / name
    raise ConfigError(
        f"no checkpoint under {Path(cfg.runs_dir) / cfg.name}: run `train run --stage ...` first "
        "or pass --checkpoint"
    )
