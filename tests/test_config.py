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
