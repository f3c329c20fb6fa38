"""Output guards and atomic writes: inputs are never overwritten, unwritable or full
destinations give one line, and an interrupted write never leaves a complete-looking file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from mrict.cli import run
from mrict.data.io import read_slices, write_dicom, write_nifti
from mrict.data.raster_io import write_png
from mrict.errors import MrictError
from mrict.runtime import atomic
from mrict.runtime.checkpoint import load_checkpoint, save_checkpoint
from mrict.runtime.outputs import check_output_file, prepare_output_dir


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


def test_output_equal_inside_or_containing_input_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "MR").mkdir(parents=True)
    (data / "MR" / "a.png").write_bytes(b"x")
    for out, what in (
        (data, "same as the input"),
        (data / "MR" / "out", "inside the input"),
        (tmp_path, "contains the input"),
        (data / "." / "MR" / "..", "same"),
    ):
        with pytest.raises(MrictError) as info:
            prepare_output_dir(out, inputs=[data])
        _one_line(info, what)
    with pytest.raises(MrictError) as info:
        check_output_file(data / "MR" / "a.png", inputs=[data / "MR" / "a.png"], overwrite=True)
    _one_line(info, "same as the input")
    assert (data / "MR" / "a.png").read_bytes() == b"x"
    assert prepare_output_dir(tmp_path / "results", inputs=[data]).is_dir()


def test_non_empty_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prepare_output_dir(out)  # empty is fine
    (out / "old.txt").write_text("previous run")
    with pytest.raises(MrictError) as info:
        prepare_output_dir(out)
    _one_line(info, "not empty", "--overwrite")
    assert prepare_output_dir(out, overwrite=True) == out
    assert (out / "old.txt").read_text() == "previous run"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MrictError, match="not a folder"):
        prepare_output_dir(tmp_path / "file", overwrite=True)
    with pytest.raises(MrictError, match="exists"):
        check_output_file(out / "old.txt")


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_unwritable_output_is_found_before_any_work(tmp_path, monkeypatch, err):
    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(MrictError) as info:
        prepare_output_dir(tmp_path / "out")
    _one_line(info, "cannot write to output folder", "out")


def test_read_only_folder_gives_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions (covered by the simulated test)")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(MrictError) as info:
            prepare_output_dir(out)
        _one_line(info, "cannot write")
    finally:
        out.chmod(0o700)


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "png", "checkpoint"])
@pytest.mark.parametrize("where", ["write", "rename"])
def test_full_disk_leaves_no_file_and_one_line(tmp_path, monkeypatch, fmt, where):
    target = (
        tmp_path / {"dicom": "a.dcm", "nifti": "a.nii.gz", "png": "a.png", "checkpoint": "ck"}[fmt]
    )
    real_replace = os.replace

    def full_replace(src, dst):
        if where == "rename":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    def write():
        img = np.full((8, 8), 30.0)
        if fmt == "dicom":
            write_dicom(target, img, modality="CT", patient_id="P")
        elif fmt == "nifti":
            write_nifti(target, img[None])
        elif fmt == "png":
            write_png(target, img)
        else:
            save_checkpoint(target, {"w": np.ones(3, np.float32)})

    if where == "write":
        # the disk fills while the file is being written: a few bytes land, then ENOSPC
        real_open = open

        class _Full:
            def __init__(self, fh):
                self._fh = fh

            def write(self, data):
                self._fh.write(bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self._fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._fh.close()

        def full_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            return _Full(fh) if "w" in mode and ".partial" in str(file) else fh

        import builtins

        monkeypatch.setattr(builtins, "open", full_open)
        monkeypatch.setattr(
            atomic.Path,
            "write_bytes",
            lambda self, data: full_open(self, "wb").write(data) and None,
        )
    monkeypatch.setattr(os, "replace", full_replace)
    try:
        write()
        raised = None
    except MrictError as exc:
        raised = exc
    monkeypatch.undo()
    if fmt == "checkpoint" and raised is None:
        load_checkpoint(target)  # the writer did not hit the fault; the result must be whole
        return
    assert raised is not None, "a full disk must be reported"
    assert "\n" not in str(raised) and "No space left" in str(raised)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [], leftovers


_WRITER = """
import sys, numpy as np
from mrict.data.io import write_nifti
vol = np.random.default_rng(0).normal(size=(96, 256, 256)).astype(np.float32)
print("start", flush=True)
while True:
    write_nifti(sys.argv[1], vol)
"""


def test_kill_during_write_never_leaves_a_complete_looking_file(tmp_path):
    target = tmp_path / "out" / "vol.nii.gz"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"start"
    time.sleep(1.0)  # gzip of 40 MB takes seconds: the kill lands mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    visible = [n for n in names if not n.startswith(".")]
    hidden = [n for n in names if n.startswith(".")]
    assert all(n.endswith(".partial") for n in hidden), names
    if visible:  # an earlier write finished: it must be whole
        assert visible == ["vol.nii.gz"]
        assert len(read_slices(target)) == 96
    else:  # the data layer never mistakes a partial file for an image
        with pytest.raises(MrictError, match="no image files"):
            read_slices(tmp_path / "out")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_cli_full_or_read_only_disk_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, capsys, err
):
    def failing_replace(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "replace", failing_replace)
    out = tmp_path / "sim"
    argv = [
        "simulate",
        str(out),
        "--mri-patients",
        "1",
        "--ct-patients",
        "1",
        "--test-patients",
        "1",
        "--slices-per-patient",
        "1",
        "--size",
        "32",
        "--format",
        "png",
    ]
    code = run(argv)
    err_text = capsys.readouterr().err
    assert code == 2, err_text
    assert err_text.startswith("error: ") and err_text.count("\n") == 1, err_text
    assert os.strerror(err) in err_text
    monkeypatch.undo()
    visible = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(tmp_path).parts)
    ]
    assert visible == [], visible


@pytest.fixture
def seg_run(make_dataset, tmp_path):
    """A tiny trained segmenter and a folder of MR images to segment."""
    import torch

    from mrict.data.datasets import load_modality
    from mrict.segmentation.config import SegConfig
    from mrict.segmentation.trainer import train_segmenter

    root = make_dataset("png", patients=1, slices=2, size=32, modalities=("MR",))
    cfg = SegConfig(image_size=32, channels=(4, 8), num_res_units=1, batch_size=2, iterations=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_modality(root, "MR", size=32, progress=False)
        run_dir = train_segmenter(data, None, tmp_path / "segrun", cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir, root / "MR" / "image_MR"


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_segment_output_guards(seg_run, tmp_path, capsys, monkeypatch):
    run_dir, images = seg_run
    before = _snapshot(images.parent.parent), _snapshot(run_dir)
    one = sorted(images.iterdir())[0]
    for inp, out, needle in (
        (images, images, "same as the input"),
        (images, images / "masks", "inside the input"),
        (one, images, "contains the input"),
        (images, run_dir, "same as the input"),
        (images, run_dir / "masks", "inside the input"),
    ):
        assert run(["segment", str(run_dir), str(inp), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not (images / "masks").exists() and not (run_dir / "masks").exists()
    # a non-empty output folder needs --overwrite; what it held stays
    out = tmp_path / "masks"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert run(["segment", str(run_dir), str(images), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert run(["segment", str(run_dir), str(images), str(out), "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "notes.txt" in names and len(names) == 1 + len(list(images.iterdir()))
    assert (out / "notes.txt").read_text() == "keep me"
    assert (_snapshot(images.parent.parent), _snapshot(run_dir)) == before
    # an unwritable destination is one line, found before the model is even loaded
    monkeypatch.setattr(tempfile, "mkstemp", _refusing(errno.EROFS))
    assert run(["segment", str(run_dir), str(images), str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and err.count("\n") == 1


def _refusing(err):
    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    return refuse


def test_study_output_guards(tmp_path, capsys, monkeypatch):
    from mrict.study.run import STUDY_MARKER, check_study_folder

    data = tmp_path / "data"
    (data / "MR" / "image_MR").mkdir(parents=True)
    (data / "MR" / "image_MR" / "a.png").write_bytes(b"x")
    base = ["study", str(data), "--seeds", "1", "--out"]
    for out, needle in (
        (data, "same as the input"),
        (data / "study", "inside the input"),
        (data / "MR", "inside the input"),
        (tmp_path, "contains the input"),
    ):
        assert run([*base, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert sorted(p.name for p in data.rglob("*")) == ["MR", "a.png", "image_MR"]
    # a non-empty folder that is not a study is left alone unless --overwrite
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    assert run([*base, str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds no mrict study" in err and "--overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in other.iterdir()) == ["holiday.jpg"]
    check_study_folder(other, data, overwrite=True)  # allowed when asked for
    # an interrupted or finished study folder is continued (its finished runs are kept)
    study = tmp_path / "study"
    (study / "runs").mkdir(parents=True)
    (study / STUDY_MARKER).write_text('{"kind": "mrict-study"}')
    check_study_folder(study, data)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "results.json").write_text("{}")
    check_study_folder(legacy, data)
    (study / STUDY_MARKER).write_text("not json")  # a damaged marker proves nothing
    with pytest.raises(MrictError, match="holds no mrict study"):
        check_study_folder(study, data)
    (tmp_path / "afile").write_text("x")
    assert run([*base, str(tmp_path / "afile")]) == 2
    assert "not a folder" in capsys.readouterr().err
    for err_no in (errno.EACCES, errno.ENOSPC):
        monkeypatch.setattr(tempfile, "mkstemp", _refusing(err_no))
        assert run([*base, str(tmp_path / "new")]) == 2
        err = capsys.readouterr().err
        assert "cannot write to output folder" in err and err.count("\n") == 1, err
