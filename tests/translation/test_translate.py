"""Inference, file round trips, paired evaluation, baselines, ONNX export and CLI errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from mrict.cli import run as cli
from mrict.data.io import read_slices
from mrict.data.raster_io import native_to_stored, write_png
from mrict.translation.baselines import histogram_baseline, match_quantiles
from mrict.translation.config import GanConfig
from mrict.translation.evaluate import evaluate_translation
from mrict.translation.export import export_onnx
from mrict.translation.metrics import ct_metrics, edge_correlation, head_mask_from_ct
from mrict.translation.networks import build_models
from mrict.translation.trainer import save_generators
from mrict.translation.translate import load_generators, translate_array, translate_path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding tiny, randomly initialised generators (no training needed)."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    gens, _ = build_models(4, 1, 4, 3)
    cfg = GanConfig(image_size=32, ngf=4, n_blocks=1)
    q = np.linspace(-1, 1, 101).tolist()
    save_generators(gens, run, cfg, {"histograms": {"MR": q, "CT": q}})
    return run


def test_translate_array_shapes_and_batching(run_dir: Path) -> None:
    g = load_generators(run_dir)["mr2ct"]
    x = np.random.default_rng(0).uniform(-1, 1, (5, 32, 32)).astype(np.float32)
    a, b = translate_array(g, x, batch_size=2), translate_array(g, x, batch_size=5)
    assert a.shape == x.shape and np.abs(a).max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "png"])
def test_translate_dataset_round_trip(
    fmt: str, make_dataset, run_dir: Path, tmp_path: Path
) -> None:
    data = make_dataset(fmt, patients=2, slices=2, size=40, modalities=("MR",))
    out = tmp_path / "out"
    written = translate_path(run_dir, data, out, "mr2ct", batch_size=3, progress=False)
    src = sorted(p.name for p in (data / "MR" / "image_MR").iterdir())
    assert sorted(p.name for p in written) == src  # same names, same format
    for p in written:
        assert p.parent == out / "CT" / "image_CT"
        for s in read_slices(p, "CT"):
            assert s.fmt == fmt and s.shape == (40, 40)
            assert s.pixels.min() >= -1024.5 and s.pixels.max() <= 3000.5
            assert s.pixels.std() > 0
    masks = sorted(p.name for p in (out / "CT" / "mask_CT").iterdir())
    assert masks == sorted(p.name for p in (data / "MR" / "mask_MR").iterdir())
    first = written[0]
    if fmt == "dicom":
        ds = pydicom.dcmread(first)
        assert ds.Modality == "CT" and "RescaleIntercept" in ds
    if fmt == "nifti":
        src_img = nib.load(data / "MR" / "image_MR" / first.name)
        np.testing.assert_allclose(nib.load(first).affine, src_img.affine)


def test_translate_single_file_ct2mr_and_refusals(
    make_dataset, run_dir: Path, tmp_path: Path
) -> None:
    data = make_dataset("png", patients=1, slices=1, size=32, modalities=("CT",))
    src = next((data / "CT" / "image_CT").iterdir())
    before = src.read_bytes()
    out = tmp_path / "single"
    [written] = translate_path(run_dir, src, out, "ct2mr", progress=False)
    assert written == out / src.name and src.read_bytes() == before
    assert read_slices(written, "MR")[0].shape == (32, 32)
    code = cli(
        ["translate", str(run_dir), str(src.parent), str(src.parent), "--direction", "ct2mr"]
    )
    assert code == 2 and src.read_bytes() == before


def test_cli_errors(run_dir: Path, tmp_path: Path, capsys) -> None:
    img = tmp_path / "x.png"
    write_png(img, np.zeros((8, 8), np.uint8), bits=8)
    cases = [
        (
            [
                "translate",
                str(tmp_path / "norun"),
                str(img),
                str(tmp_path / "o"),
                "--direction",
                "mr2ct",
            ],
            "run folder not found",
        ),
        (
            ["translate", str(run_dir), str(img), str(tmp_path / "o"), "--direction", "mr2pet"],
            "unknown direction",
        ),
        (
            [
                "translate",
                str(run_dir),
                str(tmp_path / "nofile.png"),
                str(tmp_path / "o"),
                "--direction",
                "mr2ct",
            ],
            "input not found",
        ),
        (["eval-translation", str(tmp_path), str(tmp_path)], "no trained generators"),
        (["export", str(run_dir)], "--onnx"),
        (
            [
                "train-gan",
                str(tmp_path / "nodata"),
                "--out",
                str(tmp_path / "r"),
                "--iterations",
                "1",
            ],
            "data folder not found",
        ),
        (
            [
                "train-gan",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
                "--iterations",
                "1",
            ],
            "either --epochs or --iterations",
        ),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, err


def test_onnx_export_matches_torch(run_dir: Path, tmp_path: Path) -> None:
    result = export_onnx(run_dir, tmp_path / "onnx")
    assert set(result) == {"mr2ct", "ct2mr"}
    for info in result.values():
        assert Path(info["path"]).is_file() and info["max_abs_diff"] < 1e-4


def _paired(tmp_path: Path, n: int = 3, size: int = 32) -> Path:
    from tests.conftest import brainlike  # noqa: PLC0415

    rng = np.random.default_rng(1)
    root = tmp_path / "paired_data" / "paired_test"
    for i in range(n):
        ct, _ = brainlike(rng, size, "CT")
        mr = np.where(ct > 1000, 50.0, np.where(ct > -500, 600.0, 0.0))  # bone dark on MR
        write_png(root / "CT" / f"P{i}.png", native_to_stored(ct, 16, "CT"), bits=16)
        write_png(root / "MR" / f"P{i}.png", native_to_stored(mr, 16, "MR"), bits=16)
    return root.parent


def test_evaluate_paired_with_baselines(run_dir: Path, tmp_path: Path) -> None:
    data = _paired(tmp_path)
    res = evaluate_translation(run_dir, data)
    assert res["n_slices"] == 3
    for direction in ("mr2ct", "ct2mr"):
        assert set(res[direction]) == {"model", "identity", "histogram"}
    for method in ("model", "identity", "histogram"):
        row = res["mr2ct"][method]
        assert row["mae_hu"] > 0 and -1 <= row["ssim"] < 1 and np.isfinite(row["psnr"])
    assert set(res["unpaired_not_fidelity"]) == {"mr2ct", "ct2mr"}
    assert (run_dir / "eval_translation.json").is_file()
    assert cli(["eval-translation", str(run_dir), str(data), "--json"]) == 0
    assert cli(["eval-translation", str(run_dir), str(data)]) == 0


def test_ct_metrics_and_head_mask() -> None:
    yy, xx = np.mgrid[:64, :64]
    ct = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 400, 40.0, -1000.0)
    ct[30:34, 30:34] = -1000.0  # an air pocket inside the head stays in the mask
    mask = head_mask_from_ct(ct)
    assert mask[32, 32] and not mask[0, 0]
    perfect = ct_metrics(ct, ct, mask)
    assert perfect["mae_hu"] == 0 and perfect["ssim"] > 0.999 and np.isinf(perfect["psnr"])
    off = ct_metrics(ct + 100.0, ct, mask)
    assert abs(off["mae_hu"] - 100.0) < 1e-6 and off["ssim"] < perfect["ssim"]
    assert edge_correlation(ct, -3 * ct + 5) > 0.999


def test_histogram_matching_follows_reference() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (32, 32)).astype(np.float32)
    ref = np.sort(rng.uniform(-1, 0.5, 5000))
    q = np.quantile(ref, np.linspace(0, 1, 1001))
    out = match_quantiles(img, q)
    assert out.min() >= -1.0 and out.max() <= 0.5
    assert abs(np.median(out) - np.median(ref)) < 0.05
    assert np.all(np.diff(out.ravel()[np.argsort(img.ravel())]) >= 0)  # monotone
    assert histogram_baseline(img[None], q).shape == (1, 32, 32)


def test_translate_cli_guards_outputs_and_anonymizes(
    make_dataset, run_dir: Path, tmp_path: Path, capsys
) -> None:
    data = make_dataset("dicom", patients=1, slices=1, size=32, modalities=("MR",))
    argv = ["translate", str(run_dir), str(data), "--direction", "mr2ct"]
    assert cli([*argv, str(data / "inside")]) == 2
    assert "input" in capsys.readouterr().err
    out = tmp_path / "anon"
    assert cli([*argv, str(out), "--anonymize"]) == 0
    capsys.readouterr()
    (written,) = (out / "CT" / "image_CT").iterdir()
    ds = pydicom.dcmread(written)
    assert ds.PatientID != "MR000" and "MR000" not in str(ds.PatientName)
    assert b"MR000" not in written.read_bytes()
    assert cli([*argv, str(out)]) == 2  # non-empty output needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli([*argv, str(out), "--overwrite"]) == 0
