"""The study's segmenters in worker processes (``--workers``): a spawn process pool fed
through a data file, each wave's jobs started longest first, and SIGINT/SIGTERM handled so
that finished segmenters and the running ones' checkpoints are kept."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.interrupt import TrainingInterrupted, stop_on_signals
from mrict.study.jobs import RESUME_HINT, Job, StudyData, run_job, waves
from mrict.study.scenarios import REGISTRY

_WORKER: dict[str, Any] = {}


def _init_worker(data_file: str, threads: int, stop: Any) -> None:
    import pickle

    import torch

    torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the group and the parent forwards SIGTERM: an idle
    # worker ignores both, a training worker's own handler (train_segmenter's, restored to
    # "ignore" afterwards) saves its checkpoint and stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # the data comes through a file this study wrote a moment ago (not through the pipe
    # that starts the worker: a worker dying while that pipe is written would block the
    # parent for good)
    with open(data_file, "rb") as fh:
        _WORKER["data"] = pickle.load(fh)
    _WORKER["stop"] = stop


def _worker_job(job: Job) -> tuple[dict[str, Any] | None, list[str]]:
    lines: list[str] = []
    if _WORKER["stop"].is_set():  # queued before the stop request, started after it
        return None, lines
    try:
        return run_job(job, _WORKER["data"], progress=False, stage=lines.append), lines
    except TrainingInterrupted:
        return None, lines  # checkpoint saved; the parent reports the interruption


def _slim(s: SliceSet) -> SliceSet:
    """``s`` without its source-slice records (workers need pixels, masks and patients)."""
    return SliceSet(s.modality, s.images, s.masks, s.has_mask, list(s.patient_ids))


def slim_data(data: StudyData) -> StudyData:
    return dataclasses.replace(
        data,
        part={m: {k: _slim(v) for k, v in d.items()} for m, d in data.part.items()},
        translated={m: {k: _slim(v) for k, v in d.items()} for m, d in data.translated.items()},
    )


class StudyInterrupted(MrictError):
    """The study stopped on SIGINT/SIGTERM; finished segmenters and the running ones'
    checkpoints are kept. The CLI exits with code 130."""

    exit_code = 130


def _forward_stop(flag: Any, pending: dict[Future[Any], Job], stop: Any) -> None:
    """Cancel the jobs not yet started (``stop`` tells the workers to skip the ones already
    queued); pass a SIGTERM on to the workers (Ctrl-C already reached them through the
    terminal's process group: a second SIGINT would abort them without a checkpoint)."""
    stop.set()
    for f in pending:
        f.cancel()
    if flag.signal_name == "SIGTERM":
        for child in multiprocessing.active_children():
            if child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)


def expected_cost(job: Job) -> int:
    """Rough relative training time, to start a wave's longest jobs first (so that the
    workers finish a wave together): a self-training student (two data sets per batch,
    pseudo-labelling first) > one trained on translated data > the others."""
    spec = REGISTRY[job.scenario]
    if spec.teacher is not None:
        return 3
    return 2 if "translated" in spec.trains_on else 1


def _close_pool(pool: ProcessPoolExecutor, stop: Any, force: bool, grace_s: float = 120) -> None:
    """Shut the pool down. After a stop or a dead worker (``force``), a worker the pool
    no longer tracks (one started just as another died) could wait for work for ever:
    give every child ``grace_s`` to save its checkpoint and exit, then kill it."""
    if not force:
        pool.shutdown(wait=True, cancel_futures=True)
        return
    stop.set()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(5)
    pool.shutdown(wait=True)


def pool_results(
    jobs: Sequence[Job], data: StudyData, workers: int, threads: int, stage: Callable[[str], None]
) -> Iterator[tuple[Job, dict[str, Any]]]:
    import pickle
    import tempfile

    ctx = multiprocessing.get_context("spawn")
    stopped, broken, stop = False, False, ctx.Event()
    data.out.mkdir(parents=True, exist_ok=True)
    fd, data_file = tempfile.mkstemp(prefix=".jobs-data.", suffix=".pkl", dir=data.out)
    with stop_on_signals(quiet=True) as flag:
        pool: ProcessPoolExecutor | None = None
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
            pool = ProcessPoolExecutor(workers, ctx, _init_worker, (data_file, threads, stop))
            for wave in waves(jobs, data.cfg.schedule):
                wave = sorted(wave, key=expected_cost, reverse=True)  # stable: else as listed
                pending: dict[Future[Any], Job] = {pool.submit(_worker_job, j): j for j in wave}
                while pending:
                    finished, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
                    if flag.requested and not stopped:
                        stopped = True
                        stage(f"{flag.signal_name}: the running segmenters save checkpoints")
                        _forward_stop(flag, pending, stop)
                    for f in finished:
                        job = pending.pop(f)
                        if f.cancelled():
                            continue
                        result, lines = f.result()  # a worker's MrictError is raised here
                        for line in lines:
                            stage(line)
                        if result is None:
                            stopped = True
                        else:
                            yield job, result
                    pending = {f: j for f, j in pending.items() if not f.cancelled()}
                if stopped:
                    break
        except BrokenProcessPool as exc:
            broken = True
            if not flag.requested:
                raise MrictError(
                    "a segmenter process died (out of memory, or killed); finished segmenters "
                    "are kept: run the same command again to continue (--workers 1 uses less "
                    "memory)",
                    data.out,
                ) from exc
            stopped = True
        finally:
            if pool is not None:
                _close_pool(pool, stop, force=broken or stopped)
            Path(data_file).unlink(missing_ok=True)
    if stopped:
        raise StudyInterrupted(
            f"stopped; finished segmenters and checkpoints are kept; resume with: {RESUME_HINT}",
            data.out,
        )
