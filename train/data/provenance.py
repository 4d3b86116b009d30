"""Which store a checkpoint was trained on, and the check that keeps evaluation honest.

Every checkpoint records ``store = {"id", "path", "trained_on"}``: the store id
from the manifest (a hash of splits, options and shard checksums, see
:mod:`aem_synth.store.identity`), where it was, and the real case ids whose
data trained the weights: the training split of every stage's store,
accumulated along ``init`` from stage to stage.  Evaluation refuses a split
that holds any of those cases (a store rebuilt with other splits), prints
both store ids (:func:`describe_stores`) and warns when it evaluates on
another store than the one trained on.  Only ids are compared, never paths:
a store moved or copied elsewhere is the same store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aem_synth.errors import ShardError
from aem_synth.store.shards import read_manifest

__all__ = ["check_evaluation_store", "describe_stores", "store_record"]


def store_record(shards: Path | str, inherited: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``store`` entry of a checkpoint trained on ``shards``.

    Parameters
    ----------
    shards : Path or str
        The store the stage reads.
    inherited : mapping, optional
        The ``store`` entry of the checkpoint the stage starts from; its
        ``trained_on`` cases are carried over.

    Returns
    -------
    dict
        ``id`` (str or None for stores built before ids existed), ``path``
        (absolute), ``trained_on`` (sorted case ids).
    """
    manifest = read_manifest(Path(shards))
    trained = set(manifest.get("splits", {}).get("train", []))
    trained |= set((inherited or {}).get("trained_on", []))
    return {
        "id": manifest.get("store_id"),
        "path": str(Path(shards).resolve()),
        "trained_on": sorted(trained),
    }


def check_evaluation_store(meta: Mapping[str, Any], shards: Path | str, split: str) -> list[str]:
    """Refuse to evaluate on cases the checkpoint was trained on; note a different store.

    Parameters
    ----------
    meta : mapping
        Checkpoint metadata (its ``store`` entry; checkpoints without one pass).
    shards : Path or str
        The store to evaluate on.
    split : str

    Returns
    -------
    list of str
        Notes for the user (evaluation on another store than the one trained on).

    Raises
    ------
    ShardError
        The split holds cases listed in the checkpoint's ``trained_on``.
    """
    saved = meta.get("store")
    if not isinstance(saved, Mapping):
        return []
    manifest = read_manifest(Path(shards))
    current = manifest.get("store_id")
    leaked = sorted(
        set(manifest.get("splits", {}).get(split, [])) & set(saved.get("trained_on", []))
    )
    if leaked:
        shown = ", ".join(leaked[:10]) + (
            f", ... ({len(leaked)} in all)" if len(leaked) > 10 else ""
        )
        raise ShardError(
            f"{shards}: split {split!r} holds {len(leaked)} case(s) the checkpoint was trained "
            f"on ({shown}); its scores would be meaningless. The checkpoint was trained on store "
            f"{saved.get('id')} ({saved.get('path')}), this is store {current}: evaluate on the "
            "store it was trained with, or retrain on this one"
        )
    if saved.get("id") and not _same_store(saved["id"], manifest):
        return [
            f"evaluating on store {current} ({Path(shards).resolve()}); the checkpoint was "
            f"trained on store {saved.get('id')} ({saved.get('path')})"
        ]
    return []


def _same_store(saved_id: str, manifest: Mapping[str, Any]) -> bool:
    """The checkpoint's store id names this store: its id, or (for a checkpoint trained
    on a store whose id predates shard checksums) its build identity, which decides the
    same samples."""
    return saved_id in (manifest.get("store_id"), manifest.get("build_id"))


def describe_stores(meta: Mapping[str, Any], shards: Path | str) -> list[str]:
    """Two lines: the store evaluated on and the one the checkpoint was trained on.

    Parameters
    ----------
    meta : mapping
        Checkpoint metadata (its ``store`` entry, when it has one).
    shards : Path or str
        The store evaluated on.

    Returns
    -------
    list of str
        ``"store: <id> (<path>)"`` and ``"trained on store: <id> (<path>)"``,
        the latter ending in ``: the same store`` or ``: another store``.
    """
    manifest = read_manifest(Path(shards))
    current = manifest.get("store_id") or "without id (built before store ids)"
    lines = [f"store: {current} ({Path(shards).resolve()})"]
    saved = meta.get("store")
    if not isinstance(saved, Mapping) or not saved.get("id"):
        lines.append("trained on store: not recorded in the checkpoint")
        return lines
    same = "the same store" if _same_store(saved["id"], manifest) else "another store"
    lines.append(f"trained on store: {saved['id']} ({saved.get('path')}): {same}")
    return lines
