"""The one exception type users see: a one-line message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class MrictError(Exception):
    """A user-facing failure. The CLI prints ``error: <path>: <message>`` and exits with code 2.

    Raise it for every problem caused by the user's input (bad files, bad options, bad
    folders), never for programming errors.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{self.path}: {text}" if self.path else text
