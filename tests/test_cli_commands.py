"""Every registered ``mrict`` command, run in-process through :func:`mrict.cli.run` on the
tiny simulated data set with its main options: exit code 0 and the files and output it
promises. One CycleGAN and two U-Nets are trained once (module scope) and reused by the
commands that need a trained model. Each command also gets a bad-input case: exit code 2,
a one-line ``error:`` message, no traceback.

A command registered in :mod:`mrict.cli` without a ``test_<command>`` function here (or a
stated reason in ``SKIPPED``) and a bad-input case in ``BAD_INPUT`` fails
:func:`test_every_command_is_run_here`.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import typer
from PIL import Image

import mrict.commands.study as study_cmd
from mrict.cli import app, run


def _command_names(group: Any, prefix: str = "") -> list[str]:
    """Every command and sub-command of a click group (as in tests/test_imports.py)."""
    names = []
    for name, command in sorted(group.commands.items()):
        names.append(prefix + name)
        if hasattr(command, "commands"):
            names += _command_names(command, f"{prefix}{name} ")
    return names


COMMANDS = _command_names(typer.main.get_command(app))

#: commands this file does not run, and why (none: every command runs on the CPU)
SKIPPED: dict[str, str] = {}


class Result(NamedTuple):
    code: int
    out: str
    err: str


def cli(*argv: Any) -> Result:
    """``mrict ARGV`` in this process; its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def ok(*argv: Any) -> Result:
    result = cli(*argv)
    assert result.code == 0, f"mrict {' '.join(map(str, argv))}:\n{result.err[-3000:]}"
    return result


@pytest.fixture(scope="module", autouse=True)
def _tiny_settings(
    tmp_path_factory: pytest.TempPathFactory, tiny_presets: Callable[..., Any]
) -> Iterator[None]:
    """Tiny quick presets, one CPU thread and a private slice cache for the whole module
    (the module-scoped runs below are made before any test's own fixtures); PyTorch's
    thread count, which the commands set, is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        tiny_presets(mp)
        mp.setenv("MRICT_THREADS", "1")
        mp.setenv("MRICT_CACHE_DIR", str(tmp_path_factory.mktemp("cli-slice-cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_phantom: Path) -> dict[str, Any]:
    """``train-gan`` and ``train-seg`` (CT and MR) on ``tiny_phantom``, 2 steps each."""
    root = tmp_path_factory.mktemp("cli")
    gan = root / "gan"
    argv = ["train-gan", tiny_phantom, "--out", gan, "--iterations", 2, "--seed", 0]
    gan_out = ok(*argv, "--device", "cpu", "--precision", "fp32").out
    seg, seg_out = {}, {}
    for m in ("CT", "MR"):
        seg[m] = root / f"seg_{m}"
        argv = ["train-seg", tiny_phantom, "--modality", m, "--out", seg[m], "--seed", 0]
        seg_out[m] = ok(*argv, "--iterations", 2, "--image-size", 32, "--device", "cpu").out
    return {"data": tiny_phantom, "gan": gan, "gan_out": gan_out, "seg": seg, "seg_out": seg_out}


@pytest.fixture(scope="module")
def study(trained: dict[str, Any]) -> tuple[Path, Result]:
    """``mrict study`` on ``tiny_phantom`` with the trained CycleGAN, 1 seed, 1 fraction."""
    out = trained["gan"].parent / "study"
    argv = ["study", trained["data"], "--out", out, "--gan-run", trained["gan"], "--seeds", 1]
    return out, ok(*argv, "--label-fraction", "1.0", "--seg-iterations", 1, "--seed", 0)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# ---- one test per command ----


def test_version() -> None:
    out = ok("version").out
    assert out.startswith("mrict ") and "torch" in out and "Python" in out


def test_simulate(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    argv = ["simulate", out, "--mri-patients", 1, "--ct-patients", 1, "--test-patients", 1]
    argv += ["--val-patients", 1, "--slices-per-patient", 2, "--size", 32, "--format", "png"]
    text = ok(*argv, "--seed", 3, "--mr-contrast", "t2", "--oedema-masks").out
    assert "wrote 12 slices" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["mr_contrast"] == "t2" and manifest["parameters"]["seed"] == 3
    assert sorted(p["group"] for p in manifest["patients"]) == [
        "ct",
        "mri",
        "paired_test",
        "paired_val",
    ]
    assert (out / "preview.png").stat().st_size > 0
    assert len(_files(out / "MR" / "image_MR")) == len(_files(out / "MR" / "oedema_MR")) == 2
    assert len(_files(out / "paired_test" / "CT")) == len(_files(out / "paired_val" / "mask")) == 2


def test_inspect(tiny_phantom: Path) -> None:
    table = ok("inspect", tiny_phantom).out
    assert "modality" in table and "patients" in table and "MR" in table and "CT" in table
    report = json.loads(ok("inspect", tiny_phantom, "--json").out)
    for m in ("MR", "CT"):
        s = report["modalities"][m]
        assert (s["patients"], s["slices"], s["labelled_slices"]) == (5, 10, 10)
    assert [p for p in report["problems"] if p["severity"] == "error"] == []


def test_train_gan(trained: dict[str, Any]) -> None:
    gan = trained["gan"]
    assert f"trained generators: {gan / 'generators.safetensors'}" in trained["gan_out"]
    for name in ("generators.safetensors", "generators.json", "config.yaml", "losses.csv"):
        assert (gan / name).is_file(), name
    assert len((gan / "losses.csv").read_text().splitlines()) > 1


def test_train_seg(trained: dict[str, Any]) -> None:
    for m, run_dir in trained["seg"].items():
        assert f"segmenter written to {run_dir}" in trained["seg_out"][m]
        for name in ("model.json", "model.safetensors", "history.csv", "config.yaml"):
            assert (run_dir / name).is_file(), (m, name)
        assert json.loads((run_dir / "model.json").read_text())["meta"]["modality"] == m


def test_translate(trained: dict[str, Any], tmp_path: Path) -> None:
    data, gan = trained["data"], trained["gan"]
    # a data set: MR images become CT images, their masks are copied alongside
    out = tmp_path / "mr2ct"
    text = ok("translate", gan, data, out, "--direction", "mr2ct", "--batch-size", 4).out
    names = _files(data / "MR" / "image_MR")
    assert _files(out / "CT" / "image_CT") == names
    assert _files(out / "CT" / "mask_CT") == _files(data / "MR" / "mask_MR")
    assert f"wrote {len(names)} file(s)" in text
    # a folder of images, the other direction
    out = tmp_path / "ct2mr"
    ok("translate", gan, data / "CT" / "image_CT", out, "--direction", "ct2mr")
    assert _files(out) == _files(data / "CT" / "image_CT")
    img = np.asarray(Image.open(out / _files(out)[0]))
    assert img.shape == (32, 32)


def test_segment(trained: dict[str, Any], tmp_path: Path) -> None:
    images = trained["data"] / "CT" / "image_CT"
    out = tmp_path / "masks"
    text = ok("segment", trained["seg"]["CT"], images, out, "--seed", 0).out
    assert _files(out) == _files(images)
    assert f"{len(_files(images))} mask file(s) written" in text
    for name in _files(out):
        assert set(np.unique(np.asarray(Image.open(out / name)))) <= {0, 255}


def test_evaluate(trained: dict[str, Any], tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    argv = ["evaluate", trained["seg"]["MR"], trained["data"], "--split", "test"]
    text = ok(*argv, "--json", metrics).out
    assert "per patient: Dice" in text and "policy:" in text and f"written to {metrics}" in text
    doc = json.loads(metrics.read_text())
    assert doc["summary"]["modality"] == "MR" and doc["summary"]["split"] == "test"
    assert doc["patients"] and all(0.0 <= p["dice"] <= 1.0 for p in doc["patients"])


def test_eval_translation(trained: dict[str, Any]) -> None:
    argv = ["eval-translation", trained["gan"], trained["data"]]
    segmenters = ["--segmenter-ct", trained["seg"]["CT"], "--segmenter-mr", trained["seg"]["MR"]]
    doc = json.loads(ok(*argv, *segmenters, "--json").out)
    for direction, key in (("mr2ct", "mae_hu"), ("ct2mr", "mae")):
        assert np.isfinite(doc[direction]["model"][key]), direction
        assert {"mr2ct", "ct2mr"} <= set(doc["segmenter_dice"]) and direction in doc["lesion"]
    assert set(doc["unpaired_not_fidelity"]) == {"mr2ct", "ct2mr"}
    assert (trained["gan"] / "eval_translation.json").is_file()
    table = ok(*argv, "--paired-split", "val").out
    assert "MR -> CT" in table and "CT -> MR" in table and "unpaired scores" in table


def test_export(trained: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    text = ok("export", trained["gan"], "--onnx", "--out", out, "--seed", 1).out
    assert _files(out) == ["ct2mr.onnx", "mr2ct.onnx"]
    assert text.count("max |onnxruntime - torch|") == 2


def test_export_nnunet(trained: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "nnUNet_raw"
    argv = ["export-nnunet", trained["data"], out, "--target", "CT", "--gan", trained["gan"]]
    text = ok(*argv, "--dataset-id", 9, "--source", "both").out
    folder = out / "Dataset009_MrictCTRealTranslated"
    info = json.loads((folder / "dataset.json").read_text())
    assert info["numTraining"] == len(_files(folder / "labelsTr")) > 0
    assert len(_files(folder / "imagesTr")) == info["numTraining"]
    m = info["mrict"]
    assert m["real_cases"] > 0 and m["translated_cases"] > 0
    assert f"nnU-Net data set written to {folder}" in text


def test_study(study: tuple[Path, Result]) -> None:
    out, result = study
    assert f"report: {out / 'report.html'}" in result.out
    assert "<html" in (out / "report.html").read_text().lower()
    doc = json.loads((out / "results.json").read_text())
    assert {r["target"] for r in doc["per_patient"]} == {"CT", "MR"}
    assert (out / "results.csv").is_file() and (out / "study.json").is_file()


def test_report(study: tuple[Path, Result], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(study[0], tmp_path / "study"))  # the module's study stays
    (copy / "report.html").unlink()
    (copy / "figures" / "segmentation_metrics.png").unlink()
    text = ok("report", copy).out
    assert f"report: {copy / 'report.html'}" in text
    assert "<html" in (copy / "report.html").read_text().lower()
    assert (copy / "figures" / "segmentation_metrics.png").stat().st_size > 0


def test_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_phantom_params) -> None:
    # the demo's own data set, seeds and fractions, shrunk (its study runs the tiny presets)
    monkeypatch.setattr(study_cmd, "DEMO_DATA", tiny_phantom_params)
    monkeypatch.setattr(study_cmd, "DEMO_SEEDS", 1)
    monkeypatch.setattr(study_cmd, "DEMO_FRACTIONS", (1.0,))
    out = tmp_path / "demo"
    result = ok("demo", "--out", out, "--seed", 0)
    assert (out / "data" / "manifest.json").is_file()
    report = (out / "study" / "report.html").resolve()
    assert f"report: {report}" in result.out and "demo finished" in result.out
    assert "<html" in report.read_text().lower()


def test_bench(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    text = ok("bench", "--tiny", "--only", "data", "--no-write", "--out", results).out
    assert "-- data" in text and "| what | slices | slices/s |" in text
    assert not results.exists()  # --no-write


# ---- bad input: exit code 2, one error line, no traceback ----

#: per command, arguments naming a missing folder (MISSING) or another bad input; DATA is
#: the tiny data set and OUT a fresh output path that must not be created
BAD_INPUT: dict[str, list[str]] = {
    "simulate": ["OUT", "--size", "8"],
    "inspect": ["MISSING"],
    "train-gan": ["MISSING", "--out", "OUT", "--iterations", "1"],
    "train-seg": ["MISSING", "--modality", "CT", "--out", "OUT", "--iterations", "1"],
    "translate": ["MISSING", "DATA", "OUT", "--direction", "mr2ct"],
    "segment": ["MISSING", "DATA", "OUT"],
    "evaluate": ["MISSING", "DATA"],
    "eval-translation": ["MISSING", "DATA"],
    "export": ["MISSING", "--onnx", "--out", "OUT"],
    "export-nnunet": ["MISSING", "OUT", "--target", "CT", "--source", "real"],
    "study": ["MISSING", "--out", "OUT"],
    "report": ["MISSING"],
    "demo": ["--out", "FILE"],
    "bench": ["--tiny", "--only", "data", "--out", "DIR"],
}
#: commands that read no input at all
NO_INPUT = {"version": "takes no arguments"}
#: an output path of the wrong kind (a file for a folder, a folder for a file)
WRONG_KIND_OUTPUTS = {
    "train-gan --out FILE": ["DATA", "--out", "FILE", "--iterations", "1"],
    "train-seg --out FILE": ["DATA", "--modality", "CT", "--out", "FILE", "--iterations", "1"],
    "evaluate --json DIR": ["SEG", "DATA", "--json", "DIR"],
}


def _expand(args: list[str], tmp_path: Path, data: Path) -> list[str]:
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "a_dir").mkdir(exist_ok=True)
    where = {
        "MISSING": tmp_path / "missing",
        "OUT": tmp_path / "out",
        "FILE": tmp_path / "a_file",
        "DIR": tmp_path / "a_dir",
        "DATA": data,
    }
    return [str(where.get(a, a)) for a in args]


def _assert_one_line_error(result: Result) -> None:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.err
    assert sum(line.startswith("error:") for line in lines) == 1, result.err
    assert "Traceback" not in result.err + result.out


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_is_one_line_error(command: str, tmp_path: Path, tiny_phantom: Path) -> None:
    result = cli(command, *_expand(BAD_INPUT[command], tmp_path, tiny_phantom))
    _assert_one_line_error(result)
    assert not (tmp_path / "out").exists(), "a failed command left its output behind"


@pytest.mark.parametrize("case", sorted(WRONG_KIND_OUTPUTS))
def test_output_path_of_the_wrong_kind_is_one_line_error(
    case: str, tmp_path: Path, trained: dict[str, Any], tiny_phantom: Path
) -> None:
    args = _expand(WRONG_KIND_OUTPUTS[case], tmp_path, tiny_phantom)
    args = [str(trained["seg"]["CT"]) if a == "SEG" else a for a in args]
    _assert_one_line_error(cli(case.split()[0], *args))


# ---- the list above is complete ----


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_run_here(command: str) -> None:
    if command in SKIPPED:
        pytest.skip(SKIPPED[command])
    name = "test_" + command.replace("-", "_").replace(" ", "_")
    assert callable(globals().get(name)), f"no test runs `mrict {command}` here: add {name}()"
    assert command in BAD_INPUT or command in NO_INPUT, f"add a bad-input case for {command}"
