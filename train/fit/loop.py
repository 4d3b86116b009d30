"""The one training loop shared by the three stages, written as a short sequence of hooks.

Stages differ only in their :class:`StagePlan`: the data, the initial
weights and the objective (segmentation loss, or segmentation + KD).  The
loop itself is::

    restore()                       # resume from last.pt, or start at step 0
    for epoch in remaining epochs:
        for batch in epoch:         # skip the batches a resumed epoch already did
            train_step(batch)       # augment, forward, loss, finite check, backward, step
            log_step()              # metrics.csv row, progress bar, rolling last.pt
        end_epoch()                 # validate (best.pt), objective hook (teacher refresh)
        after_epoch()               # last.pt, PNG
    finish()                        # final.pt

Only rank 0 writes files.  A non-finite loss raises
:class:`NonFiniteLossError` before the optimiser step, so the last
checkpoint on disk is the last good one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from train.config import Config, StageConfig, config_to_dict
from train.data import batch_to_device
from train.data.augment import BatchAugment
from train.fit.checkpoint import (
    CheckpointError,
    check_same_config,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from train.fit.distributed import DistInfo, all_reduce_mean, autocast_dtype, barrier, wrap_model
from train.fit.objectives import Objective
from train.fit.optim import build_optimizer, load_optimizer_state, poly_lr, set_lr
from train.fit.validation import BEST_KEY
from train.report.plots import MetricsLog, plot_loss_curve

__all__ = [
    "NonFiniteLossError",
    "StagePlan",
    "Trainer",
    "Validator",
    "run_loop",
]

log = logging.getLogger(__name__)


Validator = Callable[[nn.Module], dict[str, float]]
"""``validator(model) -> {column: value}``, larger ``val_score`` is better (:mod:`train.fit.validation`)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the stage, step and loss part."""


@dataclass
class StagePlan:
    """Everything stage-specific the loop needs (built by :mod:`train.fit.stages`).

    Attributes
    ----------
    stage : str
    config : Config
    model : nn.Module
        The bare backbone, already initialised and on ``device``.
    objective : Objective
    train_data : torch Dataset
        A ``train.data.crops.CropDataset``; its loader is built by the loop.
    make_loader : callable
        ``make_loader(dataset, batch_size=, workers=, distributed=, seed=)``.
    validator : callable or None
        Full-volume validation (``validator(model) -> columns``, with
        ``val_score`` the ``best.pt`` criterion); ``None`` disables validation.
    meta : dict
        Extra checkpoint keys (backbone name and kwargs, num_classes).
    """

    stage: str
    config: Config
    model: nn.Module
    objective: Objective
    train_data: Any
    make_loader: Callable[..., Any]
    validator: Validator | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def stage_config(self) -> StageConfig:
        return self.config.stage_config(self.stage)

    @property
    def out_dir(self) -> Path:
        return self.config.stage_dir(self.stage)


def _seed(config: Config, stage: str, rank: int, stream: int) -> int:
    seq = np.random.SeedSequence(
        [config.seed, ["pretrain", "train", "posttrain"].index(stage), rank, stream]
    )
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    """State and hooks of one stage's loop on one rank (see the module docstring)."""

    def __init__(
        self, plan: StagePlan, info: DistInfo, device: torch.device, progress: bool = True
    ) -> None:
        self.plan, self.info, self.device = plan, info, device
        self.cfg, self.sc = plan.config, plan.stage_config
        self.out = plan.out_dir
        self.model = plan.model
        self.net = wrap_model(plan.model, info, device)
        self.optimizer = build_optimizer(self.model.parameters(), self.sc)
        self.amp = autocast_dtype(self.cfg.precision, device)
        a = self.cfg.augment
        self.augment = (
            BatchAugment(
                flip=a.flip,
                rotate_deg=a.rotate_deg,
                scale=a.scale,
                shift=a.shift,
                p_rotate=a.p_rotate,
            )
            if a.enabled
            else None
        )
        self.gen = torch.Generator().manual_seed(_seed(self.cfg, plan.stage, info.rank, 0))
        self.aug_gen = torch.Generator(device=device).manual_seed(
            _seed(self.cfg, plan.stage, info.rank, 1)
        )
        self.loader = plan.make_loader(
            plan.train_data,
            batch_size=self.sc.batch_size,
            workers=self.cfg.workers,
            distributed=info.distributed,
            seed=self.cfg.seed,
        )
        self.metrics = MetricsLog(self.out / "metrics.csv") if info.is_main else None
        self.step = 0
        self.best = -math.inf  # best val_score so far (best.pt)
        self.progress = progress and info.is_main
        self._bar: Any = None
        self._t_last = time.perf_counter()

    # -- checkpoints -----------------------------------------------------------------
    def _rng_states(self) -> dict[str, Any]:
        states = {"loop": self.gen.get_state(), "augment": self.aug_gen.get_state().cpu()}
        if not self.info.distributed:
            return {"per_rank": [states]}
        gathered: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(gathered, states)
        return {"per_rank": gathered}

    def save(self, name: str, finished: bool = False, gather: bool = True) -> Path | None:
        """Write ``name`` (``last.pt``/``final.pt``/``best.pt``) on rank 0.

        Every rank must call it when ``gather`` (the RNG states are gathered);
        ``best.pt`` is written by rank 0 alone with ``gather=False`` (weights only).
        """
        rng = self._rng_states() if gather else None
        if not self.info.is_main:
            return None
        payload: dict[str, Any] = {
            **self.plan.meta,
            "stage": self.plan.stage,
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "step": self.step,
            "epoch": self.step // self.sc.iters_per_epoch,
            "total_steps": self.sc.total_steps,
            "finished": finished,
            "objective": self.plan.objective.state_dict(),
            "best_score": self.best,
        }
        if not finished:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["rng"] = rng
        return save_checkpoint(self.out / name, payload)

    def restore(self) -> None:
        """Continue from ``last.pt`` when present: weights, optimiser, step, RNG, objective state."""
        path = self.out / "last.pt"
        if not path.is_file():
            if self.metrics is not None:  # rows of a run killed before its first checkpoint
                self.metrics.reset()
            return
        data = load_checkpoint(path, map_location=self.device)
        check_same_config(path, data.get("config"), config_to_dict(self.cfg))
        if data["stage"] != self.plan.stage:
            raise ValueError(
                f"{path}: checkpoint of stage {data['stage']!r}, expected {self.plan.stage!r}"
            )
        if int(data.get("total_steps", self.sc.total_steps)) != self.sc.total_steps:
            raise ValueError(
                f"{path}: the interrupted run had {data['total_steps']} steps but the config now asks for "
                f"{self.sc.total_steps}; re-run with --force to start the stage again"
            )
        load_weights(self.model, data["model"], str(path))
        try:
            load_optimizer_state(self.optimizer, data["optimizer"])
            self.plan.objective.load_state_dict(data["objective"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: cannot resume from it ({type(exc).__name__}: {exc}); run the stage "
                "again with --force to start over"
            ) from exc
        self.step = int(data["step"])
        self.best = float(data.get("best_score", -math.inf))
        ranks = data["rng"]["per_rank"]
        if len(ranks) == self.info.world_size:
            self.gen.set_state(ranks[self.info.rank]["loop"].cpu())
            self.aug_gen.set_state(ranks[self.info.rank]["augment"].to(self.aug_gen.device))
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)
        log.info(
            "%s: resumed from %s at step %d of %d",
            self.plan.stage,
            path,
            self.step,
            self.sc.total_steps,
        )

    # -- one step ------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        # Batches arrive compact (float16 / uint8) and are widened on the device.
        b = batch_to_device(batch, self.device)
        return {k: b[k] for k in ("image", "label", "mask")}

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step on ``batch``; returns the rank-averaged loss parts as floats."""
        b = self._to_device(batch)
        if self.augment is not None:
            b["image"], b["label"] = self.augment(b["image"], b["label"], b["mask"], self.aug_gen)
        lr = poly_lr(
            self.sc.lr, self.step, self.sc.total_steps, self.sc.poly_power, self.sc.warmup_steps
        )
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        self.net.train()
        with self._autocast():
            loss, parts = self.plan.objective(self.net, b, self.gen)
        values = self._reduce({**parts, "loss": loss.detach()})
        self._check_finite(values)
        loss.backward()
        if self.sc.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.sc.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {**values, "lr": lr}

    def _reduce(self, parts: dict[str, Tensor | float]) -> dict[str, float]:
        names = sorted(parts)
        stacked = torch.stack(
            [torch.as_tensor(parts[n]).detach().float().reshape(()).to(self.device) for n in names]
        )
        return dict(zip(names, all_reduce_mean(stacked, self.info).tolist(), strict=True))

    def _check_finite(self, values: dict[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not np.isfinite(v)}
        if not bad:
            return
        parts = [k for k in bad if k != "loss"] or ["loss"]
        last = self.out / "last.pt"
        kept = f"last good checkpoint {last}" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"stage {self.plan.stage}: non-finite loss at step {self.step + 1} "
            f"(epoch {self.step // self.sc.iters_per_epoch}): "
            + ", ".join(f"{k} = {bad[k]}" for k in parts)
            + f"; stopping, {kept} is kept (lower the learning rate or check the data)"
        )

    # -- logging -------------------------------------------------------------------------
    def log_step(self, values: dict[str, float], extra: dict[str, float] | None = None) -> None:
        now = time.perf_counter()
        rate = self.sc.batch_size * self.info.world_size / max(now - self._t_last, 1e-9)
        self._t_last = now
        row = {
            "step": self.step,
            "epoch": (self.step - 1) // self.sc.iters_per_epoch,
            **values,
            "samples_per_s": rate,
            **(extra or {}),
        }
        if self.metrics is not None:
            self.metrics.append(row)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.2f}")
            self._bar.update(1)

    # -- epochs ----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Batches of ``epoch`` still to run (a resumed epoch skips those already done)."""
        self.loader.sampler.set_epoch(epoch)
        done = self.step - epoch * self.sc.iters_per_epoch
        return itertools.islice(iter(self.loader), done, self.sc.iters_per_epoch)

    def validate(self) -> dict[str, float]:
        """Full-volume validation (rank 0); writes ``best.pt`` when ``val_score`` improves."""
        validator = self.plan.validator
        if validator is None:
            return {}
        t0 = time.perf_counter()
        val = validator(self.model)
        self.model.train()
        val["val_seconds"] = time.perf_counter() - t0
        score = val.get(BEST_KEY, -math.inf)
        if score > self.best:
            self.best = score
            self.save("best.pt", finished=True, gather=False)
        log.info(
            "%s step %d: validation %s",
            self.plan.stage,
            self.step,
            ", ".join(f"{k} {v:.4f}" for k, v in val.items()),
        )
        return val

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Hooks after the last step of ``epoch``: validation, objective hook, checkpoint, PNG."""
        done = epoch + 1
        val: dict[str, float] = {}
        every = self.sc.validate_every
        if (
            self.plan.validator is not None
            and every
            and (done % every == 0 or done == self.sc.epochs)
        ):
            if self.info.is_main:
                val = self.validate()
            barrier(self.info)
        if self.plan.objective.on_epoch_end(done, self.net):
            log.info("%s: teacher refreshed after epoch %d", self.plan.stage, done)
        return val

    def after_epoch(self) -> None:
        self.save("last.pt")
        if self.info.is_main:
            plot_loss_curve(self.out / "metrics.csv", self.out / "loss_curve.png", self._title())

    def _title(self) -> str:
        return f"{self.cfg.name} / {self.plan.stage}"

    def run(self) -> int:
        """The loop; returns the number of optimiser steps of the stage."""
        self.restore()
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.sc.total_steps, initial=self.step, desc=self.plan.stage, unit="step"
            )
        try:
            for epoch in range(self.step // self.sc.iters_per_epoch, self.sc.epochs):
                self._run_epoch(epoch)
        finally:
            if self._bar is not None:
                self._bar.close()
        self.save("final.pt", finished=True)
        return self.step

    def _run_epoch(self, epoch: int) -> None:
        last_step = (epoch + 1) * self.sc.iters_per_epoch
        for batch in self.epoch_batches(epoch):
            values = self.train_step(batch)
            if self.step < last_step:
                self.log_step(values)
                if self.step % self.sc.checkpoint_every == 0:
                    self.save("last.pt")
            else:
                self.log_step(values, self.end_epoch(epoch))
                self.after_epoch()
        if self.step != last_step:
            raise RuntimeError(
                f"stage {self.plan.stage}: epoch {epoch} ended after step {self.step}, expected {last_step}; "
                "the loader yielded too few batches"
            )


def run_loop(plan: StagePlan, info: DistInfo, device: torch.device, progress: bool = True) -> int:
    """Run (or resume) the stage described by ``plan``; returns its total optimiser steps."""
    return Trainer(plan, info, device, progress).run()
