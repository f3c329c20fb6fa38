"""The one progress-bar style of mrict (rich), shown only on an interactive terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(
    enabled: bool,
    label: str = "{task.description}",
    *,
    info: bool = False,
    elapsed: bool = False,
    transient: bool = True,
    stderr: bool = True,
) -> Progress:
    """A bar ``label | bar | n/N | [elapsed] | remaining | [info]``.

    Disabled unless ``enabled`` and the output stream is a terminal, so logs and pipes stay
    clean. ``info`` adds a column showing the task field ``info`` (losses, scores...).
    """
    stream = sys.stderr if stderr else sys.stdout
    columns: list[ProgressColumn | str] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if elapsed:
        columns.append(TimeElapsedColumn())
    columns.append(TimeRemainingColumn())
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(
        *columns,
        console=Console(stderr=stderr),
        disable=not (enabled and stream.isatty()),
        transient=transient,
    )
