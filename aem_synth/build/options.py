"""Options and summary of a shard build (DESIGN §5, §6).

:class:`BuildOptions` is everything ``aem-synth build`` takes; :class:`BuildSummary`
is what a finished build reports (samples, bytes, seconds per phase, skipped cases).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aem_synth.store.shards import CODECS, DEFAULT_CODEC

__all__ = ["BuildOptions", "BuildSummary"]


@dataclass(frozen=True)
class BuildOptions:
    """Options of one build (what ``aem-synth build`` parses).

    Attributes
    ----------
    root, out : Path
        Dataset root and store folder.
    multiplier : int
        Synthetic samples per training case (``AEM x N``); 0 writes real shards only.
    seed : int
        Seed of the split generation and of the pairing / synthesis parameters.
    mode : str
        ``"signed"`` (default) or ``"abs"`` asymmetric error map.
    method : str
        ``"aem"`` or ``"mixup"`` (the paper's ablation).
    workers : int or None
        Workers of the embedded cluster; None = CPU cores.
    shard_size : int
        Samples per shard.
    splits_dir : Path or None
        Folder of split files; None = seeded split with the paper's proportions.
    scheduler : str or None
        Address of an existing Dask scheduler (else ``DASK_SCHEDULER_ADDRESS``,
        else an embedded cluster).
    layout : str or None
        Force a dataset layout; None = detect.
    strict : bool
        A case that cannot be prepared stops the build.
    codec : str
        Shard compression, one of ``aem_synth.store.shards.CODECS``.
    allow_incomplete : bool
        Let cases with a missing modality take part in synthesis (their absent
        channels stay absent in the synthetic sample).
    diversity : bool
        Allow mirroring the donor's tumour to the other hemisphere.
    dataset : str or None
        Dataset name for the split proportions (``brats2020``, ``brats2018``,
        ``brats2015``); None = from the layout.
    keep_work : bool
        Keep ``<out>/.work`` (per-case intermediates) after a successful build.
    progress : bool
        Show progress bars on stderr.
    overwrite : bool
        Replace a store of another identity (seed, splits, sample-defining
        options) found at ``out``; without it such a build stops before
        touching anything.
    """

    root: Path
    out: Path
    multiplier: int = 4
    seed: int = 0
    mode: str = "signed"
    method: str = "aem"
    workers: int | None = None
    shard_size: int = 8
    splits_dir: Path | None = None
    scheduler: str | None = None
    layout: str | None = None
    strict: bool = False
    codec: str = DEFAULT_CODEC
    allow_incomplete: bool = False
    diversity: bool = False
    dataset: str | None = None
    keep_work: bool = False
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.multiplier >= 0, f"multiplier must be >= 0, got {self.multiplier}"),
            (self.mode in ("signed", "abs"), f"mode must be 'signed' or 'abs', got {self.mode!r}"),
            (
                self.method in ("aem", "mixup"),
                f"method must be 'aem' or 'mixup', got {self.method!r}",
            ),
            (
                self.workers is None or self.workers >= 1,
                f"workers must be >= 1, got {self.workers}",
            ),
            (self.shard_size >= 1, f"shard_size must be >= 1, got {self.shard_size}"),
            (self.codec in CODECS, f"codec must be one of {list(CODECS)}, got {self.codec!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


@dataclass(frozen=True)
class BuildSummary:
    """What a build did (printed by the CLI).

    Attributes
    ----------
    out : Path
    real_samples, synthetic_samples : int
    shards, reused_shards : int
        Shards in the store, and how many of them an earlier run had finished.
    bytes : int
        Total size of the shard files.
    wall_seconds : float
        Whole build, seconds.
    prepare_seconds, shard_seconds : float
        Of which: the per-case phase (load, normalise, calibrate) and the
        shard phase (synthesise, compress, write), seconds.
    skipped : tuple of (case_id, reason)
        Cases left out of the store.
    excluded : tuple of (case_id, reason)
        Cases in the real shards but not used for synthesis.
    """

    out: Path
    real_samples: int
    synthetic_samples: int
    shards: int
    reused_shards: int
    bytes: int
    wall_seconds: float
    prepare_seconds: float = 0.0
    shard_seconds: float = 0.0
    skipped: tuple[tuple[str, str], ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def samples(self) -> int:
        return self.real_samples + self.synthetic_samples

    def format(self) -> str:
        lines = [
            f"store: {self.out}",
            f"samples: {self.samples} ({self.real_samples} real, {self.synthetic_samples} synthetic)",
            f"shards: {self.shards} ({self.reused_shards} reused from an earlier run)",
            f"bytes: {self.bytes} ({self.bytes / 2**20:.1f} MiB)",
            f"wall time: {self.wall_seconds:.1f} s (cases {self.prepare_seconds:.1f} s, "
            f"shards {self.shard_seconds:.1f} s)",
            f"skipped cases: {len(self.skipped)}",
        ]
        lines += [f"  {cid}: {why}" for cid, why in self.skipped]
        if self.excluded:
            lines.append(f"excluded from synthesis: {len(self.excluded)}")
            lines += [f"  {cid}: {why}" for cid, why in self.excluded]
        return "\n".join(lines)
