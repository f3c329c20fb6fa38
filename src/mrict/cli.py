"""The ``mrict`` command line: a thin typer layer over the Python API.

Each stage registers its commands from ``mrict.commands.<stage>``; every command is a plain
function that can also be called from Python. User-facing failures (:class:`MrictError`)
print one line ``error: <file>: <problem>`` and exit with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from mrict.errors import MrictError

app = typer.Typer(
    name="mrict",
    help=(
        "Unpaired MRI <-> CT translation of brain images (CycleGAN) and its use for "
        "brain-tumour segmentation. Start with `mrict demo`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Stage modules that add commands to ``app``; each is optional while the stage is built.
COMMAND_MODULES = (
    "mrict.commands.data",
    "mrict.commands.phantom",
    "mrict.commands.translation",
    "mrict.commands.segmentation",
    "mrict.commands.export",
    "mrict.commands.study",
    "mrict.commands.bench",
)


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


@app.command("version")
def version_command() -> None:
    """Print the mrict, torch and Python versions."""
    import platform

    import torch

    from mrict import __version__

    typer.echo(
        f"mrict {__version__}, torch {torch.__version__}, Python {platform.python_version()}"
    )


#: commands that do no tensor work: no thread planning (it samples the CPU load for 0.3 s)
LIGHT_COMMANDS = frozenset({"version", "inspect"})


@app.callback()
def _root(
    ctx: typer.Context,
    threads: str = typer.Option(
        None,
        "--threads",
        metavar="N|auto",
        help="CPU threads for PyTorch (default: MRICT_THREADS, else OMP_NUM_THREADS, else "
        "auto = the cores not kept busy by other processes at start, at least 1). Same seed "
        "and same thread count give bit-identical results.",
    ),
) -> None:
    """Unpaired MRI <-> CT translation (CycleGAN) and tumour segmentation."""
    if ctx.invoked_subcommand in LIGHT_COMMANDS:
        return
    from mrict.runtime.threads import apply_thread_plan, plan_threads

    plan = apply_thread_plan(plan_threads(threads))
    if plan.threads < plan.usable_cpus and plan.source == "auto":
        print(
            f"note: other processes keep {plan.busy_cpus:.1f} of {plan.usable_cpus} cores "
            f"busy: using {plan.describe()}; set --threads or MRICT_THREADS to pin it",
            file=sys.stderr,
        )


_register()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; return the exit code (0 ok, 2 user error, 130 interrupted)."""
    try:
        result = app(args=argv, prog_name="mrict", standalone_mode=False)
    except MrictError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        # typer vendors click; its usage errors carry show() and exit_code
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return int(exc.exit_code)
        raise
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
