"""The training loop every trainer shares: steps with a progress bar, periodic atomic
checkpoints, SIGINT/SIGTERM save-and-exit with the command that resumes, the non-finite
loss policy, and the error a damaged checkpoint gives on resume.

A trainer keeps only what is specific to its model: building it, its step, the state it
saves and restores, and what it writes at the end::

    loop = TrainingLoop(total=1000, start=resumed_step, checkpoint_every=100,
                        save=lambda step: save_checkpoint(...), checkpoint_json=run / "checkpoint.json",
                        resume_command="mrict train-gan DATA --out RUN --resume")
    last = loop.run(step_fn)   # step_fn(step) -> False to finish early
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mrict.errors import MrictError
from mrict.runtime.interrupt import TrainingInterrupted, stop_on_signals
from mrict.runtime.numerics import LossGuard, nonfinite_terms
from mrict.runtime.progress import progress_bar
from mrict.runtime.threads import follow_load


def _this_rank(flag: bool) -> bool:
    return flag


class TrainingLoop:
    """Run steps ``start + 1 .. total``.

    After every step: a checkpoint (``save(step)``) every ``checkpoint_every`` steps but
    not at the last, then ``on_step(step)``, then the CPU thread count follows the load
    (:func:`mrict.runtime.threads.follow_load`, automatic thread plans only; off with
    ``follow_threads=False``, as for a run on a GPU, whose speed the CPU threads barely
    change), then, if
    SIGINT/SIGTERM arrived (on any rank: ``any_rank``), a checkpoint (unless one was just
    written) and :class:`TrainingInterrupted` naming ``resume_command``. ``save`` is
    collective under DDP; ``any_rank`` must then reduce over ranks, so every rank decides
    alike.
    ``nonfinite`` / ``skipped``: the loss policy ("stop" or "skip") and the steps skipped
    before a resume. ``progress``: show a bar titled ``title`` (``persistent``: keep it
    on screen after the run, with the elapsed time).
    """

    def __init__(
        self,
        *,
        total: int,
        start: int = 0,
        checkpoint_every: int = 0,
        save: Callable[[int], None],
        checkpoint_json: Path,
        resume_command: str,
        nonfinite: str = "stop",
        skipped: int = 0,
        on_step: Callable[[int], None] | None = None,
        any_rank: Callable[[bool], bool] = _this_rank,
        progress: bool = True,
        title: str = "train",
        persistent: bool = False,
        quiet: bool = False,
        follow_threads: bool = True,
    ) -> None:
        self.total, self.start = total, start
        self.follow_threads = follow_threads
        self.checkpoint_every = checkpoint_every
        self._save = save
        self.checkpoint_json = checkpoint_json
        self.resume_command = resume_command
        self.on_step = on_step
        self.any_rank = any_rank
        self.quiet = quiet
        self.guard = LossGuard(nonfinite, checkpoint=checkpoint_json if start else None)
        self.guard.skipped = skipped
        self.stopped_early = False
        self.title = title
        self._bar = progress_bar(progress, info=True, elapsed=persistent, transient=not persistent)
        self._task: Any = None

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step``; later fault messages name it."""
        self._save(step)
        self.guard.checkpoint = self.checkpoint_json

    def finite(self, terms: Mapping[str, Any], step: int) -> bool:
        """True to take the step; False to skip it (policy "skip"); raises to stop. Under DDP
        every rank takes the same decision."""
        bad_here = bool(nonfinite_terms(terms))
        if not self.any_rank(bad_here):
            self.guard.consecutive = 0
            return True
        if bad_here:
            return self.guard.check(terms, step)
        if self.guard.policy == "stop":
            raise MrictError(
                f"a loss term is not finite on another process at step {step}; stopping",
                self.checkpoint_json,
            )
        return False

    def info(self, text: str) -> None:
        """Show ``text`` next to the progress bar."""
        if self._task is not None:
            self._bar.update(self._task, info=text)

    def run(self, step_fn: Callable[[int], bool]) -> int:
        """Call ``step_fn(step)`` for each step; it returns False to finish early
        (``stopped_early``). Returns the last step taken."""
        step = self.start
        with stop_on_signals(quiet=self.quiet) as stop, self._bar:
            self._task = self._bar.add_task(self.title, total=self.total, info="")
            self._bar.update(self._task, completed=self.start)
            while step < self.total:
                step += 1
                if not step_fn(step):
                    self.stopped_early = step < self.total
                    break
                self._bar.advance(self._task)
                periodic = bool(self.checkpoint_every) and step % self.checkpoint_every == 0
                periodic = periodic and step < self.total
                if periodic:
                    self.save(step)
                if self.on_step is not None:
                    self.on_step(step)
                if self.follow_threads:
                    follow_load()
                if step < self.total and self.any_rank(bool(stop)):
                    if not periodic:
                        self.save(step)
                    raise TrainingInterrupted(step, self.checkpoint_json, self.resume_command)
        self._task = None
        return step


@contextlib.contextmanager
def damaged_checkpoint_errors(checkpoint_json: Path) -> Iterator[None]:
    """Turn a failure while restoring a checkpoint's state into one line naming the file."""
    try:
        yield
    except MrictError as exc:
        if exc.path is None:
            raise MrictError(exc.message, checkpoint_json) from exc
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise MrictError(
            f"checkpoint is damaged ({type(exc).__name__}: {first}); start a new run",
            checkpoint_json,
        ) from exc
