"""Graceful stop for long runs: SIGINT/SIGTERM set a flag the training loop polls, so it can
save a checkpoint and exit with a message saying how to resume.

    with stop_on_signals() as stop:
        for step in ...:
            train_step()
            if stop:
                save_checkpoint(...)
                raise TrainingInterrupted(step, run_dir, "mrict train-gan DATA --out RUN --resume")

A second Ctrl-C while stopping raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from mrict.errors import MrictError


class StopFlag:
    """True once a stop was requested; ``signal_name`` says which signal asked."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def request(self, name: str = "request") -> None:
        self.requested = True
        self.signal_name = name

    def __bool__(self) -> bool:
        return self.requested


class TrainingInterrupted(MrictError):
    """A run stopped on request after saving its checkpoint; the CLI exits with code 130."""

    exit_code = 130

    def __init__(self, step: int, checkpoint: str | Path, resume_command: str) -> None:
        self.step = step
        self.resume_command = resume_command
        super().__init__(
            f"stopped at step {step}; checkpoint saved; resume with: {resume_command}",
            checkpoint,
        )


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *, quiet: bool = False
) -> Iterator[StopFlag]:
    """Within the block, the given signals set the yielded :class:`StopFlag` instead of
    killing the process. A second SIGINT raises KeyboardInterrupt. Previous handlers are
    restored on exit. Outside the main thread (where handlers cannot be installed) the
    flag is returned unchanged and signals keep their default behaviour.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.request(name)
        if not quiet:
            print(
                f"\n{name} received: stopping after this step and saving a checkpoint "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


def any_rank(value: bool) -> bool:
    """True when ``value`` is true on any process of a distributed run (else ``value``).

    Every rank must call it at the same point; use it on the stop flag (and on a skipped
    step) so all ranks save and stop, or skip, together instead of waiting on each other.
    """
    import torch
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return bool(value)
    backend = tdist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    flag = torch.tensor([1.0 if value else 0.0], device=device)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    return bool(flag.item() > 0)
