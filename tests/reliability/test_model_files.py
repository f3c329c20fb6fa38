"""Model files: only safetensors + JSON by default; pickles never execute; mismatches are
reported before loading."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hostile import mutate
from hypothesis import given, settings
from hypothesis import strategies as st

from mrict.errors import MrictError
from mrict.runtime.checkpoint import (
    check_config,
    load_checkpoint,
    load_module_state,
    load_weights,
    save_checkpoint,
)


class _Payload:
    """Unpickling this creates ``marker``: proof that the pickle ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(tmp_path, suffix=".pt"):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"model{suffix}"
    torch.save({"weight": torch.ones(2), "trap": _Payload(str(marker))}, evil)
    return evil, marker


def test_malicious_pickle_really_runs_code_when_unpickled_naively(tmp_path):
    evil, marker = _malicious(tmp_path)
    torch.load(evil, weights_only=False)  # what mrict never does
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickle_refused_without_opt_in_and_never_executed(tmp_path, suffix):
    evil, marker = _malicious(tmp_path, suffix)
    with pytest.raises(MrictError, match="pickle") as info:
        load_weights(evil)
    assert evil.name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MrictError, match="pickle"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_pickle_with_opt_in_is_read_safely_and_never_executed(tmp_path):
    evil, marker = _malicious(tmp_path)
    with pytest.raises(MrictError, match="unsafe content"):
        load_weights(evil, allow_pickle=True)
    assert not marker.exists()
    # a pickle with a hand-written exec payload (not via torch.save) is refused too
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises(MrictError, match=r"raw\.pth"):
        load_weights(raw, allow_pickle=True)
    assert not marker.exists()


def test_plain_legacy_state_dict_loads_with_opt_in(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "old.pth")
    state, meta = load_weights(tmp_path / "old.pth", allow_pickle=True)
    clone = torch.nn.Linear(3, 2)
    load_module_state(clone, state, "G")
    assert torch.equal(clone.weight, model.weight) and meta == {}
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(MrictError, match=r"junk\.pt"):
        load_weights(tmp_path / "junk.pt", allow_pickle=True)


def test_safetensors_checkpoint_path_traversal_and_corruption(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(4)}, {"step": 3})
    state, meta = load_weights(tmp_path / "ck.json")
    assert meta == {"step": 3} and torch.equal(state["w"], torch.ones(4))
    doc = json.loads((tmp_path / "ck.json").read_text())
    doc["weights"] = "../ck.safetensors"
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    with pytest.raises(MrictError, match="missing"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(4)})
    blob = bytearray((tmp_path / "ck.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "ck.safetensors").write_bytes(bytes(blob))
    with pytest.raises(MrictError, match="do not match"):
        load_checkpoint(tmp_path / "ck")
    # unverified read of a garbage weights file still ends in MrictError
    (tmp_path / "ck.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(MrictError, match="cannot read"):
        load_checkpoint(tmp_path / "ck", verify=False)


def test_config_and_shape_mismatch_named_before_loading(tmp_path):
    with pytest.raises(MrictError, match=r"ngf=64 \(now 32\)") as info:
        check_config(
            {"ngf": 64, "n_blocks": 9, "lr": 1e-3},
            {"ngf": 32, "n_blocks": 9, "lr": 2e-4},
            ("ngf", "n_blocks"),
            tmp_path / "ck.json",
        )
    assert "ck.json" in str(info.value) and "lr" not in str(info.value)
    check_config({"ngf": 32}, {"ngf": 32, "n_blocks": 6}, ("ngf", "n_blocks"), "x")
    big, small = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(1, 4, 3)
    before = small.weight.detach().clone()
    with pytest.raises(MrictError, match=r"weight has shape \(8, 1, 3, 3\)"):
        load_module_state(small, big.state_dict(), "G_mr2ct")
    assert torch.equal(small.weight, before)


def _tiny_segmenter(run: Path) -> Path:
    """A run folder with an (untrained) tiny U-Net saved as train_segmenter saves it."""
    from mrict.config import config_to_dict
    from mrict.segmentation.config import SegConfig
    from mrict.segmentation.model import build_unet

    cfg = SegConfig(image_size=16, channels=(4, 8), num_res_units=1, device="cpu")
    meta = {"config": config_to_dict(cfg), "modality": "MR", "in_channels": 1}
    save_checkpoint(run / "model", {"unet": build_unet(cfg).state_dict()}, meta)
    return run


#: marks a config key that _edit_config removes
_DELETE = object()


def _edit_config(run: Path, **changes: object) -> Path:
    """Rewrite RUN/model.json's config with ``changes``; return its path."""
    sidecar = run / "model.json"
    doc = json.loads(sidecar.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del doc["meta"]["config"][key]
        else:
            doc["meta"]["config"][key] = value
    sidecar.write_text(json.dumps(doc))
    return sidecar


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("channels", [4, 16]),
        ("channels", [4, 8, 16]),
        ("num_res_units", 2),
        ("norm", "batch"),
    ],
)
def test_segmenter_whose_model_json_does_not_fit_its_weights_is_named(tmp_path, key, value):
    from mrict.segmentation.predict import load_segmenter

    run = _tiny_segmenter(tmp_path / "run")
    assert load_segmenter(run).config.channels == (4, 8)
    sidecar = _edit_config(run, **{key: value})
    with pytest.raises(MrictError, match="do not fit the weights") as info:
        load_segmenter(run)
    text = str(info.value)
    assert "\n" not in text and f"{key}={value!r}" in text and str(sidecar) in text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("channels", _DELETE),
        ("num_res_units", _DELETE),
        ("dropout", _DELETE),
        ("channels", "many"),
        ("norm", "group"),
        ("num_res_units", [1]),
    ],
)
def test_segmenter_model_json_lacking_or_mistyping_a_setting_is_named(tmp_path, key, value):
    from mrict.segmentation.predict import load_segmenter

    sidecar = _edit_config(_tiny_segmenter(tmp_path / "run"), **{key: value})
    with pytest.raises(MrictError) as info:
        load_segmenter(sidecar.parent)
    text = str(info.value)
    assert "\n" not in text and key in text and str(sidecar) in text
    if value is _DELETE:
        assert "lacks the architecture setting" in text


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 4096), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.integers(0, 4096)),
        st.tuples(st.just("insert"), st.integers(0, 4096), st.binary(min_size=1, max_size=8)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(which=st.sampled_from(["json", "safetensors"]), ops=_ops, verify=st.booleans())
def test_mutated_checkpoint_files_end_in_a_user_error(which, ops, verify):
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "ck"
        save_checkpoint(stem, {"w": torch.ones(2, 3), "opt": {"step": 1, "m": [torch.zeros(2)]}})
        victim = stem.with_name(f"ck.{which}")
        victim.write_bytes(mutate(victim.read_bytes(), ops))
        try:
            state, _ = load_checkpoint(stem, verify=verify)
        except MrictError as exc:
            assert "\n" not in str(exc)
            return
        assert isinstance(state, dict)


def test_feature_loss_weights_reader_never_executes_a_pickle(tmp_path):
    losses = pytest.importorskip("mrict.translation.losses")
    evil, marker = _malicious(tmp_path, ".pth")
    # without the explicit option a pickle is refused, naming the option that allows it
    with pytest.raises(MrictError) as info:
        losses.read_weights(evil)
    text = str(info.value)
    assert "\n" not in text and "pickle" in text and evil.name in text
    assert "feature_weights_allow_pickle" in text and "--feature-weights-allow-pickle" in text
    # with it, the restricted unpickler reports the payload instead of running it
    with pytest.raises(MrictError, match="unsafe content") as info:
        losses.read_weights(evil, allow_pickle=True)
    assert "\n" not in str(info.value) and not marker.exists()
    with pytest.raises(MrictError, match="feature_weights_allow_pickle"):
        losses.build_feature_loss("vgg16", evil)
    with pytest.raises(MrictError, match="unsafe content"):
        losses.build_feature_loss("vgg16", evil, allow_pickle=True)
    assert not marker.exists()


def test_feature_loss_weights_pickle_opt_in_loads_plain_tensors(tmp_path):
    losses = pytest.importorskip("mrict.translation.losses")
    net = losses.Vgg16Features()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel prefix
    torch.save({"state_dict": state}, tmp_path / "vgg.pth")
    loss = losses.build_feature_loss("vgg16", tmp_path / "vgg.pth", allow_pickle=True)
    for key, tensor in net.state_dict().items():
        assert torch.equal(loss.net.state_dict()[key], tensor), key
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "vgg.safetensors"))  # no option needed
    assert losses.read_weights(tmp_path / "vgg.safetensors").keys() == net.state_dict().keys()


def test_train_gan_exposes_the_feature_weights_pickle_option(tmp_path, monkeypatch):
    trainer = pytest.importorskip("mrict.translation.trainer")
    from mrict.cli import run

    seen = []

    def fake_train(data, out, cfg, **kwargs):
        seen.append(cfg.feature_weights_allow_pickle)
        return Path(out)

    monkeypatch.setattr(trainer, "train_cyclegan", fake_train)
    argv = ["train-gan", str(tmp_path), "--out", str(tmp_path / "run")]
    assert run(argv) == 0 and run([*argv, "--feature-weights-allow-pickle"]) == 0
    (tmp_path / "gan.yaml").write_text("feature_weights_allow_pickle: true\n")
    assert run([*argv, "--config", str(tmp_path / "gan.yaml")]) == 0
    assert seen == [False, True, True]
