"""Config resolution: defaults <- preset <- YAML <- command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from mrict.config import resolve_config, save_config
from mrict.errors import MrictError


@dataclass
class Demo:
    size: int = 256
    lr: float = 2e-4
    feature: Literal["mind", "vgg16", "none"] = "mind"
    channels: tuple[int, ...] = (16, 32)
    compile: bool = False
    weights: str | None = None
    extra: list[str] = field(default_factory=list)


PRESETS = {"quick": {"size": 128, "channels": [8, 16]}, "paper": {"size": 256}}


def test_layering_order(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("size: 64\nlr: 0.001\ncompile: 'yes'\n")
    cfg = resolve_config(Demo, PRESETS, "quick", cfg_file, {"lr": "0.5", "feature": None})
    assert cfg.size == 64  # YAML beats preset
    assert cfg.lr == 0.5  # command line beats YAML
    assert cfg.channels == (8, 16)  # preset beats default, list -> tuple
    assert cfg.compile is True
    assert cfg.feature == "mind"  # None override ignored


def test_errors_name_the_source(tmp_path):
    with pytest.raises(MrictError, match="unknown preset"):
        resolve_config(Demo, PRESETS, "huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sise: 3\n")
    with pytest.raises(MrictError, match="unknown option 'sise'") as info:
        resolve_config(Demo, PRESETS, None, bad)
    assert str(bad) in str(info.value)
    with pytest.raises(MrictError, match="expected int"):
        resolve_config(Demo, overrides={"size": "big"})
    with pytest.raises(MrictError, match="not one of"):
        resolve_config(Demo, overrides={"feature": "alexnet"})
    with pytest.raises(MrictError, match="not found"):
        resolve_config(Demo, yaml_path=tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(MrictError, match="mapping"):
        resolve_config(Demo, yaml_path=tmp_path / "list.yaml")


def test_saved_config_resolves_to_the_same(tmp_path):
    cfg = resolve_config(Demo, PRESETS, "quick", overrides={"weights": "w.safetensors"})
    save_config(cfg, tmp_path / "resolved.yaml")
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["channels"] == [8, 16]
    assert resolve_config(Demo, yaml_path=tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("stage", ["segmentation", "translation"])
def test_every_declared_type_is_checked_and_saved_configs_resolve_to_the_same(tmp_path, stage):
    """A field whose type the loader cannot check is a TypeError, so resolving every
    preset and its saved YAML covers each field of SegConfig and GanConfig."""
    if stage == "segmentation":
        from mrict.segmentation.config import SEG_PRESETS as presets
        from mrict.segmentation.config import SegConfig as cls
    else:
        from mrict.translation.config import GAN_PRESETS as presets
        from mrict.translation.config import GanConfig as cls
    for preset in presets:
        cfg = resolve_config(cls, presets, preset)
        save_config(cfg, tmp_path / f"{preset}.yaml")
        assert resolve_config(cls, yaml_path=tmp_path / f"{preset}.yaml") == cfg


@pytest.mark.parametrize(
    ("stage", "key", "value"),
    [
        ("segmentation", "iterations", "lots"),
        ("segmentation", "iterations", 2.5),
        ("segmentation", "iterations", True),
        ("segmentation", "augment", "maybe"),
        ("segmentation", "norm", "group"),
        ("segmentation", "precision", "fp8"),
        ("segmentation", "channels", "a,b"),
        ("segmentation", "ct_window", [1.0, 2.0, 3.0]),
        ("segmentation", "ct_extra_windows", [[1.0]]),
        ("segmentation", "lr", [0.1]),
        ("segmentation", "dropout", None),
        ("segmentation", "device", ["cpu"]),
        ("translation", "precision", "fp8"),
        ("translation", "feature_loss", "alexnet"),
        ("translation", "compile", 2),
        ("translation", "seed", 1.5),
        ("translation", "seg_channels", 16),
        ("translation", "feature_weights", {"path": "w"}),
    ],
)
def test_a_wrongly_typed_yaml_key_is_one_line_naming_key_and_file(tmp_path, stage, key, value):
    if stage == "segmentation":
        from mrict.segmentation.config import SegConfig as cls
    else:
        from mrict.translation.config import GanConfig as cls
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(MrictError) as info:
        resolve_config(cls, yaml_path=path)
    text = str(info.value)
    assert "\n" not in text and f"option {key!r}" in text and text.startswith(f"{path}: ")
