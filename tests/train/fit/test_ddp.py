"""torchrun-style DDP on CPU: two gloo ranks end a stage with identical parameters; rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.train.helpers import make_store, read_rows, tiny_config_file
from train.config_files import load_config
from train.fit.distributed import DistInfo, cleanup_distributed, init_distributed, wrap_model
from train.fit.stages import build_model

OVERRIDES = ["stage.pretrain.epochs=1", "stage.pretrain.iters_per_epoch=3", "data.val_cases=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, config: str, out: str) -> None:
    from train.fit.stages import run_stage

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    result = run_stage(load_config(config, OVERRIDES), "pretrain", progress=False)
    assert result.model is not None
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pt")


def test_two_gloo_ranks_keep_identical_parameters(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    config = tiny_config_file(tmp_path, store)
    mp.spawn(_rank, args=(2, _free_port(), str(config), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = load_config(config, OVERRIDES)
    out = cfg.stage_dir("pretrain")
    final = torch.load(out / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], a[k]) for k in a)
    torch.manual_seed(cfg.seed)
    start = build_model(cfg).state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)  # the ranks did train
    # one metrics file with one row per step, written by rank 0 only
    assert [int(r["step"]) for r in read_rows(out / "metrics.csv")] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_single_process_environment_is_not_distributed() -> None:
    info, device = init_distributed("cpu", env={})
    assert info == DistInfo() and info.is_main and not info.distributed
    assert device.type == "cpu"


def test_torchrun_with_one_process_is_data_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    info, device = init_distributed("cpu")
    try:
        assert info.launched and info.distributed and info.world_size == 1
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        wrapped = wrap_model(torch.nn.Linear(2, 2), info, device)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    finally:
        cleanup_distributed()
    assert not dist.is_initialized()
