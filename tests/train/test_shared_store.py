"""A shared store: moved and copied elsewhere it verifies, keeps its id and trains unchanged;
training, evaluation and prediction never write into it (DESIGN §5, issue 14 item 5).

The store's files and folders are made read-only, but tests may run as root, for whom
permissions do not stop a write: what the tests assert is that the SHA-256, size and
modification time of every file, and the modification time of every folder (a file
created and removed again changes it), are the same after every command, and that no
path was added.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from aem_synth.cli import main as aem_cli
from aem_synth.store.info import store_info
from aem_synth.store.shards import sha256_file
from tests.train.helpers import tiny_config_file
from train.cli import main as train_cli
from train.config_files import load_config
from train.fit.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Snapshot = dict[str, tuple[str | None, int, int]]
# Evaluation of one case (the val split) in 32^3 windows; a stage without validation.
FAST = ["--device", "cpu", "--window", "32", "--overlap", "0", "--batch-size", "4"]
RUN = ["run", "--stage", "pretrain", "--no-progress", "--set", "stage.pretrain.validate_every=0"]


def _snapshot(root: Path) -> Snapshot:
    """Path -> (sha256 or None for a folder, size, mtime in ns) of the store and all it holds."""
    out: Snapshot = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest = sha256_file(path) if stat.S_ISREG(st.st_mode) else None
        out[path.relative_to(root).as_posix()] = (digest, st.st_size, st.st_mtime_ns)
    return out


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


@dataclass
class Shared:
    """A store copied, then moved, then made read-only, and what each command did on it."""

    store: Path
    before: Snapshot
    after: dict[str, Snapshot]
    """The store after each command, by command."""
    results: dict[str, Result]
    checkpoint: Path
    config: Path


def _invoke(cli: object, args: list[str]) -> Result:
    result = CliRunner().invoke(cli, args)  # type: ignore[arg-type]
    assert result.exit_code == 0, f"{args[0]}: {result.output}"
    return result


@pytest.fixture(scope="module")
def shared(
    phantom_store: Path, phantom_2020: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    base = tmp_path_factory.mktemp("shared")
    copied = Path(shutil.copytree(phantom_store, base / "copied" / "shards"))
    store = base / "elsewhere" / "store"
    store.parent.mkdir()
    shutil.move(copied, store)
    config = tiny_config_file(base, store)
    checkpoint = base / "runs" / "tiny" / "pretrain" / "final.pt"
    case = sorted(p for p in phantom_2020.iterdir() if p.is_dir())[0]
    predict = ["predict", "--checkpoint", str(checkpoint), "--case", str(case)]
    predict += ["--out", str(base / "pred" / "seg.nii.gz"), *FAST]
    _set_writable(store, False)
    try:
        before = _snapshot(store)
        commands = {
            "verify": (aem_cli, ["verify", str(store)]),
            "info": (aem_cli, ["info", str(store), "--verify", "--json"]),
            "run": (train_cli, [*RUN, "--config", str(config)]),
            "evaluate": (
                train_cli,
                ["evaluate", "--checkpoint", str(checkpoint), "--split", "val", *FAST],
            ),
            "predict": (train_cli, predict),
        }
        results, after = {}, {}
        for name, (cli, args) in commands.items():
            results[name] = _invoke(cli, args)
            after[name] = _snapshot(store)
    finally:
        _set_writable(store, True)
    yield Shared(store, before, after, results, checkpoint, config)


def test_training_evaluation_and_prediction_never_write_into_the_store(shared: Shared) -> None:
    assert shared.checkpoint.is_file()
    assert (shared.checkpoint.parent / "eval-val" / "dice.csv").is_file()
    assert "wrote" in shared.results["predict"].output
    for command, after in shared.after.items():
        added = sorted(set(after) - set(shared.before))
        assert not added, f"{command} wrote into the store: {added}"
        changed = [p for p in shared.before if after.get(p) != shared.before[p]]
        assert not changed, f"{command} changed in the store: {changed}"
    assert list(shared.after) == ["verify", "info", "run", "evaluate", "predict"]


def test_a_moved_store_verifies_keeps_its_id_and_trains_unchanged(
    shared: Shared, phantom_store: Path, tmp_path: Path
) -> None:
    assert shared.results["verify"].output.strip().endswith(": OK")
    moved = json.loads(shared.results["info"].output)
    original = store_info(phantom_store)
    assert moved["store_id"] == original.store_id and moved["path"] == str(shared.store)
    assert moved["check"] == {"level": "full", "ok": True, "problems": []}
    # The same stage on the original store: the same weights, the same store id.
    config = tiny_config_file(tmp_path, phantom_store)
    assert load_config(config).shards != load_config(shared.config).shards
    _invoke(train_cli, [*RUN, "--config", str(config)])
    here = load_checkpoint(tmp_path / "runs" / "tiny" / "pretrain" / "final.pt")
    there = load_checkpoint(shared.checkpoint)
    assert here["model"].keys() == there["model"].keys()
    for name, tensor in here["model"].items():
        assert torch.equal(tensor, there["model"][name]), name
    assert here["store"]["id"] == there["store"]["id"] == original.store_id
    assert here["store"]["trained_on"] == there["store"]["trained_on"]
    assert there["store"]["path"] == str(shared.store)


def test_evaluate_prints_both_store_ids_and_warns_on_another_store(
    shared: Shared, phantom_store: Path, tmp_path: Path
) -> None:
    sid = store_info(shared.store).store_id
    lines = shared.results["evaluate"].stdout.splitlines()
    assert f"store: {sid} ({shared.store})" in lines
    assert f"trained on store: {sid} ({shared.store}): the same store" in lines
    assert "warning" not in shared.results["evaluate"].output
    doc = json.loads((shared.checkpoint.parent / "eval-val" / "results.json").read_text())
    assert doc["store_id"] == sid and doc["checkpoint"]["store"]["id"] == sid
    # The original (the same store at another path): same id, no warning.  A store with
    # another id (here: the copy's manifest says so): both ids printed, and a warning.
    other = Path(shutil.copytree(phantom_store, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "store_id": "0123456789abcdef"}))
    for store, same in ((phantom_store, True), (other, False)):
        args = ["evaluate", "--checkpoint", str(shared.checkpoint), "--split", "val", *FAST]
        args += ["--shards", str(store), "--out", str(tmp_path / f"eval-{same}")]
        result = _invoke(train_cli, args)
        shown = sid if same else "0123456789abcdef"
        assert f"store: {shown} ({store})" in result.stdout
        verdict = "the same store" if same else "another store"
        assert f"trained on store: {sid} ({shared.store}): {verdict}" in result.stdout
        warning = (
            f"warning: evaluating on store {shown} ({store}); the checkpoint was trained on "
            f"store {sid} ({shared.store})"
        )
        assert (warning in result.stderr) is not same
