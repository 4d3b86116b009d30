"""Evaluate a checkpoint over the 15 modality subsets of a real split (DESIGN §8).

For every real case of the split (read from the shard store) the image is
predicted once per subset by sliding-window inference that encodes each
window once and decodes it for every subset; the argmax labels, with voxels
outside the brain of the *present* modalities set to background, are scored
with Dice and HD95 of WT, TC and ET (:mod:`train.inference.metrics`).  Outputs written to
``out_dir``:

``dice.md`` / ``dice.csv``      the paper's table (15 subsets + Average), Dice %
``hd95.md`` / ``hd95.csv``      the same for HD95 (mm)
``per_case.csv``                one row per (case, subset)
``results.json``                tables, per-case records, conventions, options,
                                checkpoint metadata
``figure.png``                  one case, a few subsets next to the ground truth
``*_etpp.*``                    the same after ET post-processing, when enabled
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from aem_synth.errors import ShardError
from aem_synth.store.shards import SampleRef, ShardReader, list_samples, read_manifest
from aem_synth.types import FloatArray, LabelArray
from train.data.provenance import check_evaluation_store, describe_stores
from train.data.subsets import ALL_SUBSETS, Mask, subset_name
from train.inference.metrics import case_metrics, conventions, postprocess_et
from train.inference.sliding_window import WindowOptions, predict_subsets
from train.report.figures import plot_subset_predictions
from train.report.tables import (
    METRICS,
    SubsetTable,
    subset_table,
    to_markdown,
    write_per_case_csv,
    write_table_csv,
)

log = logging.getLogger(__name__)

__all__ = [
    "FIGURE_SUBSETS",
    "NUM_CLASSES",
    "EvaluationOptions",
    "EvaluationResult",
    "evaluate",
    "evaluate_model",
    "evaluate_sample",
    "predict_labels",
    "read_sample",
]

NUM_CLASSES = 4
_T, _F = True, False
FIGURE_SUBSETS: tuple[Mask, ...] = (
    (_T, _F, _F, _F),
    (_F, _F, _T, _F),
    (_T, _F, _T, _F),
    (_T, _T, _T, _F),
    (_T, _T, _T, _T),
)


@dataclass(frozen=True)
class EvaluationOptions:
    """Inference and scoring options (recorded in ``results.json``).

    Attributes
    ----------
    window : WindowOptions
        Sliding-window settings.
    et_postprocess : int or None
        ET threshold in voxels for :func:`train.inference.metrics.postprocess_et`; when
        set, post-processed tables are produced *in addition*.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
    subsets : tuple of masks
        Subsets to evaluate (all 15 by default, table order).
    hd95 : bool
        Compute HD95 as well as Dice (validation during training skips it).
    """

    window: WindowOptions = field(default_factory=WindowOptions)
    et_postprocess: int | None = None
    device: str = "auto"
    subsets: tuple[Mask, ...] = ALL_SUBSETS
    hd95: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.window),
            "et_postprocess": self.et_postprocess,
            "device": self.device,
            "subsets": [subset_name(s) for s in self.subsets],
            "hd95": self.hd95,
        }


@dataclass
class EvaluationResult:
    """Records and tables of one evaluation.

    Attributes
    ----------
    records : list of dict
        One per (case, subset); see :mod:`train.report.tables`.
    dice, hd95 : SubsetTable
    records_pp, dice_pp, hd95_pp
        The same after ET post-processing (``None`` when it is off).
    files : dict
        Output name -> path.
    markdown : str
        The tables as printed (conventions line included).
    stores : list of str
        The store evaluated on and the one the checkpoint was trained on
        (:func:`train.data.provenance.describe_stores`; set by :func:`evaluate`).
    """

    records: list[dict[str, Any]]
    dice: SubsetTable
    hd95: SubsetTable
    records_pp: list[dict[str, Any]] | None = None
    dice_pp: SubsetTable | None = None
    hd95_pp: SubsetTable | None = None
    files: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""
    stores: list[str] = field(default_factory=list)


def _brain(image: FloatArray, mask: Mask) -> np.ndarray:
    present = [c for c, on in enumerate(mask) if on]
    return np.any(image[present] != 0, axis=0)


def predict_labels(
    model: Any, image: FloatArray, opts: EvaluationOptions, present: Mask | None = None
) -> dict[Mask, LabelArray]:
    """Argmax labels ``uint8 (X, Y, Z)`` per subset; voxels outside the subset's brain -> 0.

    ``present`` (the modalities the case has on disk; default all) limits the
    subsets to those it can serve: an absent modality is never presented as present.
    """
    w = opts.window
    subsets = [s for s in opts.subsets if present is None or _within(s, present)]
    if not subsets:
        return {}
    probs = predict_subsets(
        model,
        image,
        subsets,
        window=w.window,
        overlap=w.overlap,
        gaussian=w.gaussian,
        batch_size=w.batch_size,
        device=opts.device,
        amp=w.amp,
        subset_batch=w.subset_batch,
    )
    labels: dict[Mask, LabelArray] = {}
    for s in subsets:
        p = probs.pop(s)
        if p.shape[0] != NUM_CLASSES:
            raise ValueError(
                f"evaluation needs {NUM_CLASSES} classes (bg, NCR/NET, ED, ET); "
                f"the model returned {p.shape[0]}"
            )
        lab = np.argmax(p, axis=0).astype(np.uint8)
        lab[~_brain(image, s)] = 0
        labels[s] = lab
    return labels


def _within(subset: Mask, present: Mask) -> bool:
    return all(p or not m for m, p in zip(subset, present, strict=True))


def evaluate_sample(
    model: Any,
    image: FloatArray,
    label: LabelArray,
    spacing: Sequence[float],
    case_id: str,
    opts: EvaluationOptions,
    present: Mask | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, dict[Mask, LabelArray]]:
    """Records (raw and, when enabled, ET-post-processed) and predicted labels of one case.

    Parameters
    ----------
    image : ndarray, float32, (4, X, Y, Z)
        Normalised, cropped image (modality order FLAIR, T1, T1ce, T2).
    label : ndarray, uint8, (X, Y, Z)
        Ground truth, internal labels.
    spacing : sequence of 3 float
        Voxel size in mm along (X, Y, Z), for HD95.
    present : tuple of 4 bool, optional
        Modalities the case has; only the subsets within them are evaluated.
    """
    if image.shape[1:] != label.shape:
        raise ValueError(f"{case_id}: image shape {image.shape} does not match label {label.shape}")
    preds = predict_labels(model, image, opts, present)
    records: list[dict[str, Any]] = []
    records_pp: list[dict[str, Any]] | None = [] if opts.et_postprocess is not None else None
    for s, pred in preds.items():
        base = {"case_id": case_id, "subset": subset_name(s), "mask": list(s)}
        records.append({**base, **case_metrics(pred, label, spacing, with_hd95=opts.hd95)})
        if records_pp is not None:
            pp = postprocess_et(pred, opts.et_postprocess or 0)
            records_pp.append({**base, **case_metrics(pp, label, spacing, with_hd95=opts.hd95)})
    return records, records_pp, preds


@dataclass
class _Figure:
    case_id: str = ""
    image: FloatArray | None = None
    label: LabelArray | None = None
    preds: dict[Mask, LabelArray] = field(default_factory=dict)
    scores: dict[Mask, dict[str, float]] = field(default_factory=dict)

    def offer(
        self, case_id: str, image: FloatArray, label: LabelArray, preds: dict, recs: list
    ) -> None:
        """Keep the first case that has tumour (or the first case at all)."""
        if self.image is not None and (self.label is None or self.label.any() or not label.any()):
            return
        chosen = [s for s in FIGURE_SUBSETS if s in preds] or list(preds)[:5]
        self.case_id, self.image, self.label = case_id, image, label
        self.preds = {s: preds[s] for s in chosen}
        self.scores = {s: r for r in recs if (s := _mask_of(r)) in self.preds}


def _mask_of(record: dict[str, Any]) -> Mask:
    m = [bool(v) for v in record["mask"]]
    return m[0], m[1], m[2], m[3]


def read_sample(readers: dict[Path, ShardReader], ref: SampleRef) -> tuple[Any, ...]:
    """``(case_id, image, label, spacing, present)`` of a real sample; ``readers`` caches
    open shards.  ``present``: the modalities the case has (all four when not recorded)."""
    reader = readers.setdefault(ref.shard, ShardReader(ref.shard))
    meta = reader.meta(ref.sample_id)
    spacing = tuple(float(v) for v in meta.get("spacing", (1.0, 1.0, 1.0)))
    case_id = str(meta.get("case_id", ref.sample_id))
    flags = meta.get("present") or [True] * 4
    present = (bool(flags[0]), bool(flags[1]), bool(flags[2]), bool(flags[3]))
    return case_id, reader.image(ref.sample_id), reader.label(ref.sample_id), spacing, present


def evaluate_model(
    model: Any,
    shards: Path,
    split: str = "test",
    out_dir: Path | None = None,
    opts: EvaluationOptions | None = None,
    *,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate an already loaded model on the real ``split`` of a shard store.

    Raises
    ------
    ValueError
        The split has no real samples (``ShardError``), or the model's output
        does not have 4 classes.
    """
    opts = opts or EvaluationOptions()
    refs = list_samples(Path(shards), "real", split)
    if not refs:
        raise ShardError(f"{shards}: no real samples in split {split!r} to evaluate")
    records: list[dict[str, Any]] = []
    records_pp: list[dict[str, Any]] | None = [] if opts.et_postprocess is not None else None
    fig = _Figure()
    readers: dict[Path, ShardReader] = {}
    try:
        for ref in tqdm(refs, desc=f"evaluate {split}", unit="case", disable=not progress):
            case_id, image, label, spacing, present = read_sample(readers, ref)
            recs, recs_pp, preds = evaluate_sample(
                model, image, label, spacing, case_id, opts, present
            )
            records += recs
            if records_pp is not None and recs_pp is not None:
                records_pp += recs_pp
            fig.offer(case_id, image, label, preds, recs)
    finally:
        for r in readers.values():
            r.close()
    result = _tables(records, records_pp, opts)
    if out_dir is not None:
        _write_outputs(result, fig, Path(out_dir), opts, shards, split, meta or {})
    return result


def _tables(
    records: list[dict[str, Any]], records_pp: list[dict[str, Any]] | None, opts: EvaluationOptions
) -> EvaluationResult:
    n = len({r["case_id"] for r in records})
    c = conventions()
    head = (
        f"{n} case(s). Empty masks: both empty -> Dice {c['dice_both_empty']}, HD95 "
        f"{c['hd95_both_empty_mm']} mm; one empty -> Dice {c['dice_one_empty']}, HD95 "
        f"{c['hd95_one_empty_mm']} mm ({c['hd95_one_empty_rule']})."
    )
    res = EvaluationResult(
        records,
        subset_table(records, "dice", opts.subsets),
        subset_table(records, "hd95", opts.subsets),
    )
    parts = [head, "", to_markdown(res.dice, "Dice (%)"), to_markdown(res.hd95, "HD95 (mm)")]
    if records_pp is not None:
        res.records_pp = records_pp
        res.dice_pp = subset_table(records_pp, "dice", opts.subsets)
        res.hd95_pp = subset_table(records_pp, "hd95", opts.subsets)
        tag = f"after ET post-processing (ET < {opts.et_postprocess} voxels -> NCR/NET)"
        parts += [
            to_markdown(res.dice_pp, f"Dice (%) {tag}"),
            to_markdown(res.hd95_pp, f"HD95 (mm) {tag}"),
        ]
    res.markdown = "\n".join(parts)
    return res


def _write_outputs(
    res: EvaluationResult,
    fig: _Figure,
    out: Path,
    opts: EvaluationOptions,
    shards: Path,
    split: str,
    meta: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sets = [("", res.records, res.dice, res.hd95)]
    if res.records_pp is not None and res.dice_pp is not None and res.hd95_pp is not None:
        sets.append(("_etpp", res.records_pp, res.dice_pp, res.hd95_pp))
    for suffix, recs, dice_t, hd_t in sets:
        for t in (dice_t, hd_t):
            res.files[f"{t.metric}{suffix}.md"] = out / f"{t.metric}{suffix}.md"
            title = METRICS[t.metric][0] + (" after ET post-processing" if suffix else "")
            res.files[f"{t.metric}{suffix}.md"].write_text(to_markdown(t, title))
            res.files[f"{t.metric}{suffix}.csv"] = write_table_csv(
                t, out / f"{t.metric}{suffix}.csv"
            )
        res.files[f"per_case{suffix}.csv"] = write_per_case_csv(recs, out / f"per_case{suffix}.csv")
    (out / "tables.md").write_text(res.markdown)
    res.files["tables.md"] = out / "tables.md"
    if fig.image is not None and fig.label is not None:
        res.files["figure.png"] = plot_subset_predictions(
            fig.image,
            fig.label,
            fig.preds,
            out / "figure.png",
            case_id=fig.case_id,
            scores=fig.scores,
        )
    doc = {
        "shards": str(shards),
        "store_id": read_manifest(shards).get("store_id"),
        "split": split,
        "options": opts.to_dict(),
        "conventions": conventions(),
        "checkpoint": meta,
        "dice": res.dice.as_dict(),
        "hd95": res.hd95.as_dict(),
        "per_case": res.records,
    }
    if res.dice_pp is not None and res.hd95_pp is not None:
        doc["et_postprocess"] = {
            "min_voxels": opts.et_postprocess,
            "dice": res.dice_pp.as_dict(),
            "hd95": res.hd95_pp.as_dict(),
            "per_case": res.records_pp,
        }
    res.files["results.json"] = out / "results.json"
    res.files["results.json"].write_text(json.dumps(doc, indent=1, default=str))


def _shards_from_meta(meta: dict[str, Any], checkpoint: Path) -> Path:
    cfg = meta.get("config", {}) if isinstance(meta, dict) else {}
    value = cfg.get("shards") if isinstance(cfg, dict) else None
    value = value or meta.get("shards")
    if not value:
        raise ValueError(f"{checkpoint}: checkpoint records no shards path; pass --shards")
    return Path(value)


def evaluate(
    checkpoint: Path,
    split: str = "test",
    shards: Path | None = None,
    out_dir: Path | None = None,
    *,
    window: Sequence[int] | int | None = None,
    overlap: float = 0.5,
    gaussian: bool = False,
    batch_size: int = 2,
    amp: bool = False,
    et_postprocess: int | None = None,
    device: str = "auto",
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Load ``checkpoint`` and evaluate it on the real ``split`` of its (or the given) shards.

    ``out_dir`` defaults to ``<checkpoint folder>/eval-<split>``.  ``window``
    is one size for all axes or three sizes (X, Y, Z) in voxels; ``None``
    (default) takes the training crop recorded in the checkpoint, and another
    size logs a one-line note.  ``result.stores`` names the store evaluated on
    and the one trained on; when they differ, ``warn`` (default: a logged
    warning) gets one line that says so.
    """
    from train.inference.loading import load_for_inference

    checkpoint = Path(checkpoint)
    loaded = load_for_inference(
        checkpoint,
        device,
        window=window,
        overlap=overlap,
        gaussian=gaussian,
        batch_size=batch_size,
        amp=amp,
    )
    model, meta = loaded.model, loaded.meta
    opts = EvaluationOptions(loaded.window, et_postprocess, str(loaded.device))
    shards = Path(shards) if shards is not None else _shards_from_meta(meta, checkpoint)
    for note in check_evaluation_store(meta, shards, split):
        (warn or log.warning)(note)
    stores = describe_stores(meta, shards)
    for line in stores:
        log.debug(line)  # the CLI prints them; scripts read result.stores
    out = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval-{split}"
    meta_doc = {"path": str(checkpoint), **(meta if isinstance(meta, dict) else {"meta": meta})}
    result = evaluate_model(model, shards, split, out, opts, meta=meta_doc, progress=progress)
    result.stores = stores
    return result
