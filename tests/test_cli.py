"""The command-line shell: help, version, error handling."""

from __future__ import annotations

from mrict.cli import run


def test_help_lists_commands(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "version" in out and "Usage" in out


def test_version(capsys):
    assert run(["version"]) == 0
    assert "mrict" in capsys.readouterr().out


def test_unknown_command_is_usage_error(capsys):
    assert run(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err
