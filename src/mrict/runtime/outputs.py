"""Output-folder guards: never write into or over an input, never mix results into a folder
that already holds something unless asked to, and find an unwritable destination before
any work is done."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mrict.errors import MrictError


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def check_not_input(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse ``output`` when it equals an input, lies inside one, or contains one."""
    out = _resolved(output)
    for item in inputs:
        src = _resolved(item)
        if out == src:
            raise MrictError("output is the same as the input; choose another output", output)
        if out.is_relative_to(src) and src.is_dir():
            raise MrictError(f"output lies inside the input folder {item}; choose another", output)
        if src.is_relative_to(out):
            raise MrictError(f"output folder contains the input {item}; choose another", output)


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there (one-line error)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mrict-write-test.", dir=folder)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except FileExistsError as exc:
        raise MrictError("output exists and is not a folder", folder) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on device"
        raise MrictError(f"cannot write to output folder ({reason})", folder) from exc


def prepare_output_dir(
    output: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """Validate and create the output folder of a command; return it.

    Refuses (with :class:`MrictError`) an output equal to, inside, or containing an input;
    an output that exists as a file; a non-empty folder unless ``overwrite``; a folder that
    cannot be written to. Files in it are only ever replaced atomically by the writers, so
    ``overwrite`` never touches an input.
    """
    output = Path(output)
    check_not_input(output, inputs)
    if output.exists() and not output.is_dir():
        raise MrictError("output exists and is not a folder", output)
    if output.is_dir() and not overwrite and any(output.iterdir()):
        raise MrictError("output folder is not empty; pass --overwrite to write into it", output)
    check_writable(output)
    return output


def check_output_file(
    target: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """Validate a single output file: not an input, not inside an input folder, not an
    existing file unless ``overwrite``; its folder must be writable."""
    target = Path(target)
    check_not_input(target, inputs)
    if target.is_dir():
        raise MrictError("output is a folder; expected a file name", target)
    if target.exists() and not overwrite:
        raise MrictError("output file exists; pass --overwrite to replace it", target)
    check_writable(target.parent)
    return target
