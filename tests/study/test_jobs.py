"""The study's segmenter jobs: dependency waves, the source-only/target-only twin, the
worker plan, and worker processes giving exactly the in-process results (and stopping
cleanly on SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mrict.data.datasets import SliceSet
from mrict.data.intensity import hu_to_unit
from mrict.errors import MrictError
from mrict.segmentation.config import SegConfig
from mrict.study.jobs import Job, StudyData, prerequisites, run_jobs, twin, waves, worker_plan
from mrict.study.scenarios import study_jobs


@pytest.fixture
def torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def all_jobs(targets=("CT", "MR"), seeds=(0,), fractions=(1.0, 0.25)) -> list[Job]:
    return [Job(*j) for j in study_jobs(targets, list(seeds), list(fractions))]


# --- waves and the twin -------------------------------------------------------------------


def test_waves_put_prerequisites_first() -> None:
    jobs = all_jobs()
    assert len(jobs) == 14
    for schedule in ("pretrain_finetune", "mixed"):
        groups = waves(jobs, schedule)
        flat = [j for wave in groups for j in wave]
        assert sorted(flat, key=jobs.index) == jobs and len(flat) == len(set(flat))
        wave_of = {j: n for n, wave in enumerate(groups) for j in wave}
        for job in jobs:
            for pre in prerequisites(job, jobs, schedule):
                assert pre in wave_of, (job.key, pre.key)  # the study holds it
                assert wave_of[pre] < wave_of[job], (schedule, job.key, pre.key)


def test_schedule_decides_the_dependency_on_translated() -> None:
    jobs = all_jobs()
    translated = Job("CT", "translated", 0.0, 0)
    combined = Job("CT", "target_translated", 0.25, 0)
    student = Job("CT", "self_training", 0.0, 0)
    assert prerequisites(combined, jobs, "pretrain_finetune") == [translated]
    assert prerequisites(combined, jobs, "mixed") == []  # (4) mixes, no pre-training on (3)
    for schedule in ("pretrain_finetune", "mixed", "concat"):
        assert prerequisites(student, jobs, schedule) == [translated]  # (3) is the teacher
    wave_of = {j: n for n, w in enumerate(waves(jobs, "mixed")) for j in w}
    assert wave_of[combined] == 0 and wave_of[student] > wave_of[translated]
    assert wave_of[Job("MR", "source_only", 0.0, 0)] > wave_of[Job("CT", "target_only", 1.0, 0)]


def test_twin_is_the_other_targets_full_label_target_only_run() -> None:
    jobs = all_jobs(seeds=(0, 1))
    assert twin(Job("MR", "source_only", 0.0, 0), jobs) == Job("CT", "target_only", 1.0, 0)
    assert twin(Job("CT", "source_only", 0.0, 1), jobs) == Job("MR", "target_only", 1.0, 1)
    assert prerequisites(Job("CT", "source_only", 0.0, 1), jobs, "mixed") == [
        Job("MR", "target_only", 1.0, 1)
    ]
    # the other target absent, or label fraction 1 not studied: trained itself
    assert twin(Job("MR", "source_only", 0.0, 0), all_jobs(targets=("MR",))) is None
    assert twin(Job("MR", "source_only", 0.0, 0), all_jobs(fractions=(0.5, 0.25))) is None
    # another seed is another segmenter
    assert twin(Job("MR", "source_only", 0.0, 2), jobs) is None
    for scenario, f in [
        ("target_only", 1.0),
        ("translated", 0.0),
        ("target_translated", 1.0),
        ("self_training", 0.0),
    ]:
        assert twin(Job("MR", scenario, f, 0), jobs) is None, scenario


@pytest.mark.parametrize(
    ("workers", "threads", "expected"),
    [
        ("auto", 2, (2, 1)),
        ("auto", 1, (1, 1)),
        ("AUTO", 4, (2, 2)),
        ("3", 8, (3, 2)),
        ("1", 2, (1, 2)),
        (2, 1, (2, 1)),  # asked for: at least one thread each
    ],
)
def test_worker_plan(workers, threads, expected) -> None:
    assert worker_plan(workers, threads, "cpu") == expected


@pytest.mark.parametrize("workers", ["0", "x", "-2", "1.5", 0])
def test_worker_plan_rejects(workers) -> None:
    with pytest.raises(MrictError, match="--workers"):
        worker_plan(workers, 2, "cpu")


# --- running jobs -------------------------------------------------------------------------


def synthetic_set(modality: str, patients: list[str], rng: np.random.Generator) -> SliceSet:
    """2 slices a patient, 32x32: a head with a bright disc as tumour, in [-1, 1]."""
    size, images, masks, ids = 32, [], [], []
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    for p in patients:
        for _ in range(2):
            cy, cx = rng.uniform(-0.1, 0.1, 2)
            head = np.hypot(yy / 0.42, xx / 0.38) < 1.0
            tumour = head & (np.hypot(yy - cy, xx - cx) < rng.uniform(0.08, 0.14))
            if modality == "CT":
                hu = np.where(head, 35.0, -1000.0) + np.where(tumour, 120.0, 0.0)
                img = hu_to_unit(hu + rng.normal(0, 5, hu.shape))
            else:
                img = np.where(head, 0.0, -1.0) + np.where(tumour, 0.8, 0.0)
                img = np.clip(img + rng.normal(0, 0.03, img.shape), -1, 1)
            images.append(img.astype(np.float32))
            masks.append(tumour.astype(np.uint8))
            ids.append(p)
    return SliceSet(modality, np.stack(images), np.stack(masks), np.ones(len(ids), bool), ids)


def as_modality(s: SliceSet, modality: str) -> SliceSet:
    return SliceSet(modality, s.images, s.masks, s.has_mask, list(s.patient_ids))


def tiny_study(out: Path, jobs: list[Job], **cfg: Any) -> StudyData:
    rng = np.random.default_rng(0)
    counts = {"train": 3, "val": 2, "test": 2}
    part = {
        m: {k: synthetic_set(m, [f"{m}{k}{i}" for i in range(n)], rng) for k, n in counts.items()}
        for m in ("CT", "MR")
    }
    # "translated" source patients: the MR sets standing in for MR -> CT translations
    translated = {"CT": {k: as_modality(part["MR"][k], "CT") for k in ("train", "val")}}
    config = SegConfig(
        **{
            "image_size": 32,
            "channels": (4, 8),
            "num_res_units": 1,
            "batch_size": 4,
            "augment": False,
            "iterations": 3,
            "val_every": 1,
            "patience": 0,
            "precision": "fp32",
            "device": "cpu",
            "schedule": "pretrain_finetune",
            **cfg,
        }
    )
    out.mkdir(parents=True, exist_ok=True)  # as the study command does before its jobs
    return StudyData(config, out, part, translated, tuple(jobs))


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A job's result without its timing and without paths into its study folder."""
    info = dict(result["info"])
    if "pseudo_labels" in info:
        info["pseudo_labels"] = {k: v for k, v in info["pseudo_labels"].items() if k != "teacher"}
    return {"rows": result["rows"], "counts": result["counts"], "info": info}


def test_worker_processes_give_the_in_process_results(tmp_path: Path, torch_threads) -> None:
    jobs = [
        Job("CT", "target_only", 1.0, 0),
        Job("MR", "source_only", 0.0, 0),
        Job("CT", "translated", 0.0, 0),
        Job("CT", "target_translated", 1.0, 0),
        Job("CT", "self_training", 0.0, 0),
    ]
    torch.set_num_threads(1)
    lines: dict[str, list[str]] = {"one": [], "pool": []}
    results = {}
    for name, workers in (("one", 1), ("pool", 2)):
        data = tiny_study(tmp_path / name, jobs)
        results[name] = run_jobs(
            jobs, data, workers=workers, threads=1, progress=False, stage=lines[name].append
        )
        assert torch.get_num_threads() == 1  # the pool leaves this process alone
    for job in jobs:
        one, pool = results["one"][job], results["pool"][job]
        assert [r["patient"] for r in one["rows"]] == [f"{job.target}test0", f"{job.target}test1"]
        np.testing.assert_equal(comparable(pool), comparable(one), err_msg=job.key)
        assert one["info"]["cpu_threads"] == 1
        weights = [job.run_dir(tmp_path / n) / "model.safetensors" for n in ("one", "pool")]
        assert weights[0].read_bytes() == weights[1].read_bytes(), job.key
    same = results["pool"][Job("MR", "source_only", 0.0, 0)]["info"]["same_segmenter_as"]
    assert same == "CT/target_only_f1/seed0"
    assert (tmp_path / "pool/runs/MR/source_only/seed0/model.safetensors").read_bytes() == (
        tmp_path / "pool/runs/CT/target_only_f1/seed0/model.safetensors"
    ).read_bytes()
    assert "pseudo_labels" in results["pool"][Job("CT", "self_training", 0.0, 0)]["info"]
    for name in ("one", "pool"):  # every job reported once, the twin as a copy
        done = [line for line in lines[name] if line.startswith("[")]
        assert len(done) == len(jobs), lines[name]
        assert any("same as CT/target_only_f1/seed0" in line for line in done)


STUDY_SCRIPT = """
import pickle, sys
from mrict.errors import MrictError
from mrict.study.jobs import run_jobs
with open(sys.argv[1], "rb") as fh:
    jobs, data = pickle.load(fh)
try:
    run_jobs(jobs, data, workers=2, threads=1, progress=False, stage=lambda s: print(s, flush=True))
except MrictError as exc:
    print(f"{type(exc).__name__}: {exc.one_line()}", file=sys.stderr, flush=True)
    sys.exit(exc.exit_code)
"""


def test_sigterm_stops_the_pool_with_checkpoints(tmp_path: Path, torch_threads) -> None:
    # one job a wave: the stop finds one job training and the next wave never starts
    # (two jobs of a wave stopped together, and a queued one: the next test)
    jobs = [Job("CT", "target_only", 1.0, 0), Job("MR", "source_only", 0.0, 0)]
    # long enough to be still training when stopped; a checkpoint every 20 steps shows
    # that the training loop is running (a worker ignores SIGTERM outside training)
    data = tiny_study(tmp_path / "study", jobs, iterations=400, val_every=50, checkpoint_every=20)
    blob = tmp_path / "study.pkl"
    blob.write_bytes(pickle.dumps((jobs, data)))
    running = jobs[0].run_dir(data.out)
    proc = subprocess.Popen(
        [sys.executable, "-c", STUDY_SCRIPT, str(blob)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (running / "checkpoint.json").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "StudyInterrupted:" in err and "resume with" in err, err
    assert "SIGTERM: the running segmenters save checkpoints" in out
    assert "SIGTERM received: stopping after this step" in err  # the worker's own handler
    assert "Traceback" not in err, err
    step = json.loads((running / "checkpoint.json").read_text())["meta"]["iteration"]
    assert 20 < step < 400  # saved on the signal, not only the periodic one
    assert not (running / "model.json").is_file()
    assert not jobs[1].run_dir(data.out).exists()  # the next wave never started

    # the same call again resumes the checkpoint and finishes every job
    torch.set_num_threads(1)
    results = run_jobs(jobs, data, workers=1, threads=1, progress=False, stage=lambda s: None)
    assert set(results) == set(jobs)
    meta = json.loads((running / "model.json").read_text())["meta"]
    assert meta["last_iteration"] == 400
    assert not (running / "checkpoint.json").exists()
    assert results[jobs[1]]["info"]["same_segmenter_as"] == jobs[0].key


# --- stopping the pool: subprocess regression tests ----------------------------------------
# Each runs a study in a child process, signals it, and fails (never hangs) when the study
# does not stop: every wait is bounded. A few seconds each on a free machine.

#: to wait for the study's workers to start and train (a loaded 2-core CI machine is slow)
START_TIMEOUT = 120
#: for the study to stop once signalled (a few seconds on a free machine)
STOP_TIMEOUT = 60

#: put before a study script: an uncaught exception in the parent process (any thread) is
#: marked, to tell it from a worker's traceback (spawned workers do not run the script)
PARENT_HOOKS = """
import sys, threading
def _marked(hook):
    def mark(*args):
        print("PARENT-UNCAUGHT", file=sys.stderr, flush=True)
        hook(*args)
    return mark
sys.excepthook = _marked(sys.__excepthook__)
threading.excepthook = _marked(threading.__excepthook__)
"""


@contextlib.contextmanager
def study_process(
    tmp_path: Path, jobs: list[Job], data: StudyData
) -> Iterator[subprocess.Popen[str]]:
    """``run_jobs(jobs, data, workers=2)`` in a child process leading a session of its own
    (a signal to its group reaches it and its workers only); on leaving, the group is
    killed unless the child was reaped (a failing test leaves no process behind)."""
    blob = tmp_path / "study.pkl"
    blob.write_bytes(pickle.dumps((jobs, data)))
    with subprocess.Popen(
        [sys.executable, "-c", PARENT_HOOKS + STUDY_SCRIPT, str(blob)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.returncode is None:  # not reaped: the group id is still its own
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def wait_for(proc: subprocess.Popen[str], ready: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        assert proc.poll() is None, (f"exited before {what}", proc.communicate())
        assert time.monotonic() < deadline, f"no {what} within {START_TIMEOUT} s"
        time.sleep(0.02)


def data_files(out: Path) -> list[Path]:
    """The pool's temporary copy of the study data (removed when the pool ends)."""
    return sorted(out.glob(".jobs-data.*"))


def test_sigterm_skips_the_queued_job(tmp_path: Path) -> None:
    """Regression: the pool queues workers + 1 jobs; after a SIGTERM the queued one
    (started once a running one had stopped) trained to completion, the study waiting."""
    jobs = [
        Job("CT", "target_only", 1.0, 0),
        Job("CT", "translated", 0.0, 0),
        Job("CT", "source_only", 0.0, 0),  # no MR target-only twin: one wave of three
    ]
    # translated first (the longest), then target only, source only queued; far more
    # steps than are trained before the stop (a queued job trained would take long)
    iterations = 3000
    data = tiny_study(
        tmp_path / "study", jobs, iterations=iterations, val_every=50, checkpoint_every=20
    )
    running = [j.run_dir(data.out) for j in jobs[:2]]
    queued = jobs[2].run_dir(data.out)
    with study_process(tmp_path, jobs, data) as proc:
        wait_for(
            proc,
            lambda: all((r / "checkpoint.json").is_file() for r in running),
            "two jobs training",
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
    assert proc.returncode == 130, (out, err)
    assert "StudyInterrupted:" in err and "resume with" in err, err
    assert "SIGTERM: the running segmenters save checkpoints" in out
    assert err.count("SIGTERM received: stopping after this step") == 2, err  # both workers
    assert "Traceback" not in err and "PARENT-UNCAUGHT" not in err, err
    for run in running:
        step = json.loads((run / "checkpoint.json").read_text())["meta"]["iteration"]
        assert 20 <= step < iterations, run
        assert not (run / "model.json").is_file(), run
    assert not queued.exists()  # skipped by its worker, never trained
    assert not [line for line in out.splitlines() if line.startswith("[")], out  # none done
    assert not data_files(data.out)


def worker_processes(pid: int) -> list[str]:
    """Process ids of ``pid``'s multiprocessing spawn children (not its resource tracker)."""
    kids: list[str] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            kids += children.read_text().split()
    workers = []
    for kid in kids:
        with contextlib.suppress(OSError):
            if b"--multiprocessing-fork" in Path(f"/proc/{kid}/cmdline").read_bytes():
                workers.append(kid)
    return workers


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="needs Linux /proc/PID/task/TID/children",
)
def test_ctrl_c_while_the_workers_start_stops_the_study(tmp_path: Path) -> None:
    """Regression: Ctrl-C (SIGINT to the whole process group) while a worker process was
    starting killed it while the parent was writing the study data into its start pipe,
    which then blocked the parent for good.

    Signalled once both workers are seen (both still importing torch). Left out: a
    Ctrl-C killing the first worker before the pool has registered the second still
    hangs the study at times (CPython's ProcessPoolExecutor, broken by the first one's
    death, then waits for the second one without having told it to stop)."""
    jobs = [
        Job("CT", "target_only", 1.0, 0),
        Job("CT", "translated", 0.0, 0),
        Job("MR", "source_only", 0.0, 0),  # the next wave: a copy of CT target only
    ]
    data = tiny_study(tmp_path / "study", jobs, iterations=400, val_every=50, checkpoint_every=20)
    with study_process(tmp_path, jobs, data) as proc:
        wait_for(proc, lambda: len(worker_processes(proc.pid)) >= 2, "two worker processes")
        time.sleep(0.5)  # the second one started by the pool, both still importing torch
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
    assert proc.returncode == 130, (out, err)
    assert "StudyInterrupted:" in err and "resume with" in err, err
    assert "PARENT-UNCAUGHT" not in err, err
    if "Traceback" in err:  # only a worker hit while starting, by the KeyboardInterrupt
        assert "KeyboardInterrupt" in err, err
    assert not data_files(data.out)
    assert not Job("MR", "source_only", 0.0, 0).run_dir(data.out).exists()  # next wave
