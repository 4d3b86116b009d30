"""The method's claim, measured: AEM pre-training and KD post-training, arm by arm, on phantoms.

``python -m pipelines.ablation --profile {smoke,cpu,gpu} --out DIR [--backbone rfnet]``

1. Generates ``hard`` phantoms (low-data regime: a few labelled training cases, a
   validation split, >= 20 test cases in ``cpu``/``gpu``), one split for all arms.
2. Builds the stores the arms need with ``aem-synth build`` (AEM x4, mixup x4; AEM
   x2 and x8 with ``--multipliers``), all from the same cases and split.
3. Trains every arm with the same fixed step budget per stage, for each seed:

   ==========  =========================================  ==========================
   arm         stages                                     data
   ==========  =========================================  ==========================
   baseline    train (scratch)                            real training cases
   aem         pretrain -> train                          AEM x4, then real
   aem_kd      aem's train -> posttrain (KD)              real
   kd          baseline's train -> posttrain (KD)         real
   mixup       pretrain -> train                          mixup x4, then real
   aem_x2/x8   pretrain -> train                          AEM x2 / x8 (``--multipliers``)
   baseline_2x train for pretrain + train steps           real (``--control``)
   ==========  =========================================  ==========================

4. Evaluates each arm's final checkpoint on the test split (15 subsets) and the
   threshold floor of the same data (:mod:`pipelines.floor`).
5. Writes ``DIR/results.json`` (per arm and seed: the 15-subset table, averages,
   single-modality average), ``DIR/summary.md`` (mean ± std over seeds; paired
   differences against the baseline per test case, averaged over seeds, with a
   bootstrap 95 % interval) and ``DIR/ablation.png``.

Every step resumes: stores and stages through the tools' own resume, finished
evaluations from their JSON files.  Progress lines go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

BASE_CONFIG = Path(__file__).with_name("ablation.toml")
REGIONS = ("WT", "TC", "ET")
STAGES = ("pretrain", "train", "posttrain")
WARMUP = {"pretrain": 20, "train": 10, "posttrain": 10}
WARMUP = {"pretrain": 20, "train": 10, "posttrain": 10}


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one profile, fixed in advance and identical across arms."""

    shape: tuple[int, int, int]
    n_train: int
    n_val: int
    n_test: int
    seeds: tuple[int, ...]
    steps: dict[str, int]
    batch: int
    crop: int
    base_channels: int
    device: str = "cpu"
    precision: str = "fp32"
    build_workers: int = 2


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        shape=(48, 48, 32),
        n_train=8,
        n_val=2,
        n_test=4,
        seeds=(0, 1, 2),
        steps={"pretrain": 3, "train": 3, "posttrain": 2},
        batch=1,
        crop=16,
        base_channels=4,
        build_workers=1,
    ),
    "cpu": Profile(
        shape=(64, 64, 48),
        n_train=8,
        n_val=4,
        n_test=20,
        seeds=(0, 1, 2),
        steps={"pretrain": 300, "train": 300, "posttrain": 150},
        batch=2,
        crop=32,
        base_channels=4,
    ),
    "gpu": Profile(
        # Brain boxes of 128x128x96 phantoms are 70-77 voxels along x: too small for 80^3.
        shape=(160, 160, 128),
        n_train=8,
        n_val=4,
        n_test=24,
        seeds=(0, 1, 2),
        steps={"pretrain": 200, "train": 200, "posttrain": 100},
        batch=2,
        crop=80,
        base_channels=16,
        device="cuda",
        precision="bf16",
        build_workers=8,
    ),
}
"""``smoke`` runs in ~1.5 minutes and ``cpu`` in about an hour on 2 cores (measured);
``gpu`` is sized by estimate for one H200 in about 8 minutes (never run: no GPU was lent).
``--multipliers`` adds the AEM x2 and x8 arms to any profile (about 60 % more training)."""


@dataclass(frozen=True)
class Arm:
    """One arm: stages run in its own run folder, optionally starting from another arm's."""

    name: str
    stages: tuple[str, ...]
    store: str  # "aem4", "mixup4", "aem2", "aem8"
    start: tuple[str, str] | None = None  # (arm, stage) whose final.pt the first stage starts from
    train_steps: tuple[str, ...] = ("train",)  # stage budgets summed into this arm's train stage


ARMS: dict[str, Arm] = {
    "baseline": Arm("baseline", ("train",), "aem4"),
    "aem": Arm("aem", ("pretrain", "train"), "aem4"),
    "aem_kd": Arm("aem_kd", ("posttrain",), "aem4", start=("aem", "train")),
    "kd": Arm("kd", ("posttrain",), "aem4", start=("baseline", "train")),
    "mixup": Arm("mixup", ("pretrain", "train"), "mixup4"),
    "aem_x2": Arm("aem_x2", ("pretrain", "train"), "aem2"),
    "aem_x8": Arm("aem_x8", ("pretrain", "train"), "aem8"),
    # Control: the baseline given the steps of pretrain + train, all on real cases, to tell
    # the effect of synthetic data from that of more steps.
    "baseline_2x": Arm("baseline_2x", ("train",), "aem4", train_steps=("pretrain", "train")),
}
BASE_ARMS = ("baseline", "aem", "aem_kd", "kd", "mixup")
STORES: dict[str, tuple[str, int]] = {
    "aem2": ("aem", 2),
    "aem4": ("aem", 4),
    "aem8": ("aem", 8),
    "mixup4": ("mixup", 4),
}


def _log(msg: str) -> None:
    click.echo(f"[ablation {time.strftime('%H:%M:%S')}] {msg}", err=True)


@dataclass
class Runner:
    out: Path
    profile: Profile
    backbone: str = "rfnet"
    with_multipliers: bool = False
    with_control: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def arms(self) -> tuple[str, ...]:
        extra = ("aem_x2", "aem_x8") if self.with_multipliers else ()
        return BASE_ARMS + extra + (("baseline_2x",) if self.with_control else ())

    def data(self) -> tuple[Path, dict[str, list[str]]]:
        """Hard phantoms and their split (generated once)."""
        from aem_synth.dataset.splits import read_splits, write_splits
        from aem_synth.phantom.generator import write_phantom_dataset

        root, splits_dir = self.out / "data", self.out / "splits"
        p = self.profile
        if not (root / "phantom.json").is_file():
            n = p.n_train + p.n_val + p.n_test
            _log(f"generating {n} hard phantoms {p.shape}")
            folders = write_phantom_dataset(
                root, n_cases=n, seed=2026, shape=p.shape, variant="hard"
            )
            ids = [f.name for f in folders]
            write_splits(
                splits_dir,
                {
                    "train": ids[: p.n_train],
                    "val": ids[p.n_train : p.n_train + p.n_val],
                    "test": ids[p.n_train + p.n_val :],
                },
            )
        return root, read_splits(splits_dir)

    def store(self, key: str, root: Path) -> Path:
        """Build (or resume) one store; AEM or mixup with a multiplier, same split."""
        from aem_synth.build import BuildOptions, build

        method, mult = STORES[key]
        out = self.out / "stores" / key
        if not (out / "manifest.json").is_file():
            _log(f"building store {key}")
            t0 = time.perf_counter()
            build(
                BuildOptions(
                    root=root,
                    out=out,
                    multiplier=mult,
                    method=method,
                    seed=0,
                    splits_dir=self.out / "splits",
                    workers=self.profile.build_workers,
                    progress=False,
                )
            )
            self.timings[f"build {key}"] = time.perf_counter() - t0
        return out

    def config(self, arm: Arm, seed: int, stage: str) -> Any:
        from train.config_files import load_config

        p = self.profile
        sets = [
            f"name={arm.name}",
            f"shards={(self.out / 'stores' / arm.store).as_posix()}",
            f"runs_dir={(self.out / 'runs' / f'seed{seed}').as_posix()}",
            f"seed={seed}",
            f"device={p.device}",
            f"precision={p.precision}",
            f"model.backbone={self.backbone}",
            f"model.base_channels={p.base_channels}",
            f"data.crop=[{p.crop},{p.crop},{p.crop}]",
        ]
        for s in STAGES:
            # posttrain runs 4 epochs so that the KD teacher is refreshed (every 2 epochs)
            epochs = 4 if s == "posttrain" else 1
            steps = sum(p.steps[t] for t in arm.train_steps) if s == "train" else p.steps[s]
            iters = max(1, steps // epochs)
            warmup = min(WARMUP[s], epochs * iters // 5)
            sets += [
                f"stage.{s}.warmup_steps={warmup}",
                f"stage.{s}.iters_per_epoch={iters}",
                f"stage.{s}.epochs={epochs}",
                f"stage.{s}.batch_size={p.batch}",
            ]
        first = arm.stages[0]
        if arm.start is not None and stage == first:
            start = self.out / "runs" / f"seed{seed}" / arm.start[0] / arm.start[1] / "final.pt"
            sets.append(f'stage.{stage}.init="{start.as_posix()}"')
        elif stage == "train" and "pretrain" not in arm.stages:
            sets.append('stage.train.init="scratch"')
        return load_config(BASE_CONFIG, sets)

    def train_arm(self, arm: Arm, seed: int) -> Path:
        from train.fit.stages import run_stage

        final = None
        for stage in arm.stages:
            cfg = self.config(arm, seed, stage)
            t0 = time.perf_counter()
            result = run_stage(cfg, stage, progress=False)
            if result.status == "finished":
                self.timings[f"{arm.name} {stage} seed{seed}"] = time.perf_counter() - t0
                _log(
                    f"seed {seed} {arm.name}: {stage} finished ({result.steps} steps, "
                    f"{time.perf_counter() - t0:.0f} s)"
                )
            final = result.final
        assert final is not None
        return final

    def evaluate_arm(self, arm: Arm, seed: int, checkpoint: Path) -> dict[str, Any]:
        from train.inference.evaluate import evaluate

        path = self.out / "evals" / f"seed{seed}-{arm.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        res = evaluate(
            checkpoint,
            split="test",
            shards=self.out / "stores" / arm.store,
            out_dir=self.out / "evals" / f"seed{seed}-{arm.name}",
            device=self.profile.device,
            amp=self.profile.precision == "bf16",
            progress=False,
        )
        doc: dict[str, Any] = {
            "arm": arm.name,
            "seed": seed,
            "table": res.dice.as_dict(),
            "records": [
                {k: r[k] for k in ("case_id", "subset", "mask", "dice_WT", "dice_TC", "dice_ET")}
                for r in res.records
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        self.timings[f"{arm.name} evaluate seed{seed}"] = time.perf_counter() - t0
        _log(
            f"seed {seed} {arm.name}: evaluated ({time.perf_counter() - t0:.0f} s): "
            + " / ".join(f"{100 * doc['table']['average'][r]:.1f}" for r in REGIONS)
        )
        return doc

    def floor(self, root: Path, splits: dict[str, list[str]]) -> dict[str, Any]:
        from pipelines.floor import floor_for_root

        path = self.out / "floor.json"
        if not path.is_file():
            result = floor_for_root(root, splits["train"], splits["test"])
            path.write_text(json.dumps(asdict(result), indent=1))
        return json.loads(path.read_text())


def single_modality_average(table: dict[str, Any]) -> dict[str, float]:
    """Mean of the four single-modality rows (the rows KD is claimed to help most)."""
    rows = [table["rows"][name] for name in ("FLAIR", "T1", "T1ce", "T2")]
    return {r: float(np.mean([row[r] for row in rows])) for r in REGIONS}


def case_means(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """case id -> region -> mean Dice over the case's subsets."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in doc["records"]:
        by_case.setdefault(r["case_id"], []).append(r)
    return {
        c: {reg: float(np.mean([r[f"dice_{reg}"] for r in rs])) for reg in REGIONS}
        for c, rs in by_case.items()
    }


def paired_difference(
    arm_docs: Sequence[dict[str, Any]],
    base_docs: Sequence[dict[str, Any]],
    rng: np.random.Generator,
    n_boot: int = 2000,
) -> dict[str, dict[str, float]]:
    """Arm minus baseline per test case (each averaged over subsets and seeds), with the mean
    and a bootstrap 95 % interval over cases, per region (Dice fractions)."""

    def per_case(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        means = [case_means(d) for d in docs]
        cases = sorted(set.intersection(*(set(m) for m in means)))
        return {c: {r: float(np.mean([m[c][r] for m in means])) for r in REGIONS} for c in cases}

    a, b = per_case(arm_docs), per_case(base_docs)
    cases = sorted(set(a) & set(b))
    out = {}
    for r in REGIONS:
        diff = np.array([a[c][r] - b[c][r] for c in cases])
        boots = rng.choice(diff, size=(n_boot, diff.size), replace=True).mean(axis=1)
        lo, hi = np.percentile(boots, [2.5, 97.5])
        out[r] = {
            "mean": float(diff.mean()),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "cases": len(cases),
        }
    return out


def summarise(
    out: Path,
    profile_name: str,
    runner: Runner,
    docs: dict[str, list[dict[str, Any]]],
    floor: dict[str, Any],
    wall: float,
) -> None:
    """results.json, summary.md and ablation.png."""
    rng = np.random.default_rng(0)
    arms: dict[str, Any] = {}
    for arm, seeds in docs.items():
        avgs = np.array([[d["table"]["average"][r] for r in REGIONS] for d in seeds])
        single = np.array(
            [[single_modality_average(d["table"])[r] for r in REGIONS] for d in seeds]
        )
        arms[arm] = {
            "per_seed": [
                {
                    "seed": d["seed"],
                    "table": d["table"],
                    "single_modality_average": single_modality_average(d["table"]),
                }
                for d in seeds
            ],
            "mean": dict(zip(REGIONS, avgs.mean(0).tolist(), strict=True)),
            "std": dict(
                zip(REGIONS, avgs.std(0, ddof=1 if len(seeds) > 1 else 0).tolist(), strict=True)
            ),
            "single_mean": dict(zip(REGIONS, single.mean(0).tolist(), strict=True)),
            "single_std": dict(
                zip(REGIONS, single.std(0, ddof=1 if len(seeds) > 1 else 0).tolist(), strict=True)
            ),
        }
        if arm != "baseline":
            arms[arm]["vs_baseline"] = paired_difference(seeds, docs["baseline"], rng)
    results = {
        "profile": profile_name,
        "config": asdict(runner.profile),
        "arms": arms,
        "floor": floor,
        "wall_seconds": wall,
        "timings": runner.timings,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"# Ablation, profile `{profile_name}` (hard phantoms, {runner.profile.n_train} training cases, "
        f"{runner.profile.n_test} test cases, seeds {list(runner.profile.seeds)}, wall {wall / 60:.1f} min)",
        "",
        "Dice % on the test split, averaged over the 15 modality subsets (mean ± std over seeds); "
        '"1-mod" is the average of the four single-modality rows. Steps per stage: '
        + ", ".join(f"{s} {n}" for s, n in runner.profile.steps.items())
        + ".",
        "",
        "| arm | WT | TC | ET | 1-mod WT | 1-mod TC | 1-mod ET |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for arm, a in arms.items():
        cells = [f"{100 * a['mean'][r]:.2f} ± {100 * a['std'][r]:.2f}" for r in REGIONS]
        cells += [
            f"{100 * a['single_mean'][r]:.2f} ± {100 * a['single_std'][r]:.2f}" for r in REGIONS
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    f = floor["test"]
    lines.append(
        "| threshold floor | " + " | ".join(f"{100 * f[r]:.2f}" for r in REGIONS) + " | | | |"
    )
    lines += [
        "",
        "Paired difference against the baseline (Dice points; per test case, averaged over subsets "
        "and seeds; mean and bootstrap 95 % interval over cases):",
        "",
        "| arm | WT | TC | ET |",
        "|---|--:|--:|--:|",
    ]
    for arm, a in arms.items():
        if "vs_baseline" in a:
            v = a["vs_baseline"]
            lines.append(
                f"| {arm} | "
                + " | ".join(
                    f"{100 * v[r]['mean']:+.2f} [{100 * v[r]['ci_low']:+.2f}, {100 * v[r]['ci_high']:+.2f}]"
                    for r in REGIONS
                )
                + " |"
            )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(out / "ablation.png", arms, floor)


def _plot(path: Path, arms: dict[str, Any], floor: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(REGIONS)
    for ax, key, title in (
        (axes[0], "", "15-subset average"),
        (axes[1], "single_", "single-modality rows"),
    ):
        for i, r in enumerate(REGIONS):
            means = [100 * arms[n][f"{key}mean"][r] for n in names]
            stds = [100 * arms[n][f"{key}std"][r] for n in names]
            ax.bar(np.arange(len(names)) + i * width, means, width, yerr=stds, label=r, capsize=2)
            if not key:
                ax.axhline(100 * floor["test"][r], color=f"C{i}", ls=":", lw=1)
        ax.set_xticks(np.arange(len(names)) + width, names, fontsize=8)
        ax.set_ylabel("Dice %")
        ax.set_title(title + (" (dotted: threshold floor)" if not key else ""), fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@click.command()
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(list(PROFILES)),
    default="smoke",
    show_default=True,
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--backbone", default="rfnet", show_default=True)
@click.option("--multipliers", is_flag=True, help="Add the AEM x2 and x8 arms.")
@click.option(
    "--control",
    is_flag=True,
    help="Add baseline_2x: the baseline trained for pretrain + train steps on real cases.",
)
def main(profile_name: str, out: Path, backbone: str, multipliers: bool, control: bool) -> None:
    """Run (or resume) the ablation benchmark and write results.json, summary.md, ablation.png."""
    from train.models import BACKBONES

    if backbone not in BACKBONES:
        raise click.BadParameter(f"unknown backbone {backbone!r}; known: {sorted(BACKBONES)}")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, PROFILES[profile_name], backbone, multipliers, with_control=control)
    root, splits = runner.data()
    for key in sorted({ARMS[a].store for a in runner.arms}):
        runner.store(key, root)
    floor = runner.floor(root, splits)
    _log("threshold floor (test): " + " / ".join(f"{100 * floor['test'][r]:.1f}" for r in REGIONS))
    docs: dict[str, list[dict[str, Any]]] = {a: [] for a in runner.arms}
    for seed in runner.profile.seeds:
        for name in runner.arms:
            arm = ARMS[name]
            docs[name].append(runner.evaluate_arm(arm, seed, runner.train_arm(arm, seed)))
    summarise(out, profile_name, runner, docs, floor, time.perf_counter() - t0)
    click.echo((out / "summary.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
