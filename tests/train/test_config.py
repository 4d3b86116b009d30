"""Config loading: defaults, unknown keys, types, dotted overrides, TOML round trip, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config import ConfigError, config_from_dict
from train.config_files import dump_toml, load_config, parse_override

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_paper() -> None:
    cfg = config_from_dict({"name": "x", "shards": "s"})
    for stage in ("pretrain", "train", "posttrain"):
        sc = cfg.stage_config(stage)
        assert (sc.lr, sc.weight_decay, sc.poly_power, sc.epochs) == (2e-4, 1e-4, 0.9, 300)
        assert sc.init == "previous"
    assert cfg.stage.posttrain.kd_refresh_every == 5
    assert cfg.data.crop == (80, 80, 80)
    assert cfg.model.backbone == "rfnet" and cfg.model.base_channels == 16
    assert cfg.stage_dir("train") == Path("runs") / "x" / "train"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            'name = "x"\nshards = "s"\nlearning_rate = 1',
            r"\['learning_rate'\] in section \[top level\]",
        ),
        ('name = "x"\nshards = "s"\n[model]\nwidth = 3', r"\['width'\] in section \[model\]"),
        (
            'name = "x"\nshards = "s"\n[stage.train]\nepoch = 3',
            r"\['epoch'\] in section \[stage\.train\]",
        ),
        (
            'name = "x"\nshards = "s"\n[stage.finetune]\nepochs = 3',
            r"\['finetune'\] in section \[stage\]",
        ),
    ],
)
def test_unknown_keys_are_named_with_their_section(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("stage.train.epochs=three", r"stage\.train\.epochs: expected int, got str"),
        ("stage.train.epochs=true", r"stage\.train\.epochs: expected int, got boolean"),
        ("data.crop=[48, 48]", r"data\.crop: expected a list of 3 values"),
        ("augment.enabled=1", r"augment\.enabled: expected true/false"),
        ("stage.train.epochs=0", r"stage\.train\.epochs must be >= 1, got 0"),
        ("device=tpu", r"device must be one of .* got 'tpu'"),
        ("data.tumour_share=1.5", r"tumour_share must be in \[0, 1\], got 1\.5"),
        ("model=3", r"model: expected a table"),
        ("name.x=3", r"'name' is a value, not a section"),
        ("nokey", r"must look like section\.key=value"),
    ],
)
def test_bad_values_and_overrides_are_rejected(tmp_path: Path, override: str, match: str) -> None:
    path = _write(tmp_path, 'name = "x"\nshards = "s"\n')
    with pytest.raises(ConfigError, match=match):
        load_config(path, [override])


def test_dotted_overrides_are_typed_and_later_ones_win(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "x"\nshards = "s"\n[stage.train]\nepochs = 10\n')
    cfg = load_config(
        path,
        [
            "stage.train.epochs=3",
            "stage.train.lr=1e-3",
            "data.crop=[48,48,48]",
            "shards=/data/my shards",
            "stage.train.epochs=4",
            "stage.posttrain.kd_weight=2",
        ],
    )
    assert cfg.stage.train.epochs == 4 and cfg.stage.train.lr == 1e-3
    assert cfg.stage.posttrain.kd_weight == 2.0 and isinstance(cfg.stage.posttrain.kd_weight, float)
    assert cfg.data.crop == (48, 48, 48)
    assert cfg.shards == "/data/my shards"
    assert cfg.stage.pretrain.epochs == 300


def test_parse_override_reads_toml_values_or_plain_strings() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override('a="q"') == (["a"], "q")
    assert parse_override("runs_dir=out/runs") == (["runs_dir"], "out/runs")


def test_resolved_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, 'name = "x"\nshards = "s\\\\q\\"z"\n'), ["data.crop=[16,24,32]"]
    )
    again = load_config(_write(tmp_path, dump_toml(cfg)))
    assert again == cfg


def test_missing_or_invalid_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config(_write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match=r"missing .*'shards'"):
        load_config(_write(tmp_path, 'name = "x"\n'))


def test_every_pipeline_recipe_loads() -> None:
    files = sorted(PIPELINES.glob("*.toml")) + sorted((PIPELINES / "ablations").glob("*.toml"))
    names = {p.stem for p in files}
    assert {"demo", "brats2020", "brats2018", "brats2015"} <= names
    assert len(list((PIPELINES / "ablations").glob("*.toml"))) >= 7
    for path in files:
        cfg = load_config(path)
        assert cfg.name, path
    demo = load_config(PIPELINES / "demo.toml")
    assert demo.device == "cpu" and max(demo.data.crop) <= 64
