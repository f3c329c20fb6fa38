"""The demo's stages under a co-running CPU job: wall-clock seconds of each stage alone and
while a "foreign" PyTorch job (not mrict, PyTorch's default threads) trains on the same
cores, as on a workstation where something else already runs.

Stages, each run through the real CLI (``python -m mrict.cli``) without ``MRICT_THREADS``
or ``OMP_NUM_THREADS``, so mrict's automatic thread policy applies
(:mod:`mrict.runtime.threads`):

1. ``mrict train-gan`` (quick preset, a fixed small number of iterations) on a small
   simulated data set;
2. ``mrict study`` on the same data set with the CycleGAN run of stage 1 (``--gan-run``),
   one seed, one label fraction, few U-Net iterations, default ``--workers``.

Each stage runs alone, then again with the foreign job started (and warmed up) before it
and stopped after it. The foreign job is a child process of this module (``python -m
bench.stages_under_load READY STOP SIZE``): a float32 conv-net training loop on random
data, continuously. Ratio = seconds under load / seconds alone: about 2x is a fair share
of the cores with one other busy job, 10x or more a collapse. Every run gets its own
prepared-slice cache folder, so none reuses another's cache. ``Settings.tiny`` (tests)
uses tiny networks and a niced load, so its figures mean nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Result, Settings, child_env, load_average, wait_for_file

REPO = Path(__file__).resolve().parents[1]
#: printed by :func:`mrict.runtime.threads.follow_load` whenever it changes the count
THREADS_CHANGE = re.compile(r"mrict: CPU threads (\d+) -> (\d+)")
#: tiny networks for ``Settings.tiny`` (figures meaningless), through the CLI's YAML files
TINY_GAN = {"image_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "batch_size": 2, "sample_count": 1}
TINY_SEG = {
    "image_size": 32,
    "channels": [4, 8],
    "num_res_units": 1,
    "batch_size": 4,
    "val_every": 2,
    "patience": 0,
    "augment": False,
}


def _cli(args: list[str], cache: Path, timeout: float = 900) -> tuple[float, str]:
    """Run ``mrict ARGS`` in a child process; its wall-clock seconds and stderr."""
    cmd = [sys.executable, "-m", "mrict.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=child_env(MRICT_CACHE_DIR=str(cache)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"mrict {args[0]} failed (exit {proc.returncode}): {tail}")
    return seconds, proc.stderr


@contextlib.contextmanager
def foreign_load(
    work: Path, size: int, settle_s: float = 1.0, nice: int = 0, timeout: float = 120
) -> Iterator[int]:
    """A default-threaded PyTorch training loop in a child process (at ``nice``), warmed
    up (and run ``settle_s`` more seconds) on entry and stopped on exit; yields its thread
    count."""
    ready, stop = work / "load.ready", work / "load.stop"
    for p in (ready, stop):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.stages_under_load", str(ready), str(stop), str(size)]
    cmd.append(str(nice))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_file(ready, proc, timeout)
        time.sleep(settle_s)  # at full speed when the stage looks at the load
        yield int(ready.read_text() or 0)
    finally:
        stop.write_text("")
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _changes(stderr: str) -> int:
    """How many times the load follower changed the thread count."""
    return len(THREADS_CHANGE.findall(stderr))


def _gan_threads(run: Path) -> str:
    """Threads of a ``train-gan`` run: ``2``, or ``2>1`` where the load changed them."""
    meta = json.loads((run / "generators.json").read_text())["meta"]
    return ">".join(str(n) for n in meta.get("cpu_threads_used") or [meta["cpu_threads"]])


def _study_threads(study: Path) -> str:
    """Segmenter processes x threads each of a study, e.g. ``2x1``."""
    info = json.loads((study / "results.json").read_text())["info"]
    procs = info["segmentation_processes"]
    return f"{procs['workers']}x{procs['threads_each']}"


def _sizes(s: Settings) -> tuple[dict[str, Any], int, int, int]:
    """Data set keywords, CycleGAN iterations, U-Net iterations, load image size."""
    from mrict.commands.study import DEMO_DATA

    data = dict(DEMO_DATA, test_patients=2, val_patients=2)
    if s.tiny:
        data.update(mri_patients=5, ct_patients=5, slices_per_patient=2, size=32)
        return data, 2, 2, 48
    if s.quick:
        data.update(mri_patients=10, ct_patients=10, slices_per_patient=4)
        return data, 30, 20, 96
    data.update(mri_patients=16, ct_patients=16, slices_per_patient=4)
    return data, 60, 40, 96


def run(s: Settings) -> Result:
    import yaml

    from mrict.phantom.simulate import simulate_dataset

    res = Result(
        "stages_under_load",
        "Demo stages alone and under a co-running default-threaded PyTorch job",
    )
    data_kw, gan_its, seg_its, load_size = _sizes(s)
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="mrict-stages-") as tmp:
        work = Path(tmp)
        data = simulate_dataset(work / "data", seed=s.seed, progress=False, workers=1, **data_kw)
        gan_extra: list[str] = []
        seg_extra: list[str] = []
        if s.tiny:
            (work / "gan.yaml").write_text(yaml.safe_dump(TINY_GAN))
            (work / "seg.yaml").write_text(yaml.safe_dump(TINY_SEG))
            gan_extra = ["--config", str(work / "gan.yaml")]
            seg_extra = ["--seg-config", str(work / "seg.yaml")]
        common = ["--seed", str(s.seed)]
        gan = ["train-gan", str(data), "--preset", "quick", "--iterations", str(gan_its)]
        gan += ["--device", s.device, *gan_extra, *common]
        study = ["study", str(data), "--preset", "quick", "--seeds", "1"]
        study += ["--label-fraction", "1.0", "--seg-iterations", str(seg_its)]
        study += ["--gan-run", str(work / "gan-alone"), *seg_extra, *common]
        stages = [
            ("gan", f"CycleGAN: mrict train-gan, quick, {gan_its} iterations", gan, _gan_threads),
            (
                "study",
                f"segmenters: mrict study, 1 seed, 1 fraction, {seg_its} U-Net iterations",
                study,
                _study_threads,
            ),
        ]
        load_threads = 0
        # tiny (tests): a niced load, which barely slows the stage, and no settling time
        load_kw = {"settle_s": 0.2, "nice": 19} if s.tiny else {}
        for key, what, args, threads_of in stages:
            seconds, threads, changes = {}, {}, {}
            for cond in ("alone", "load"):
                out = work / f"{key}-{cond}"
                argv = [*args, "--out", str(out)]
                if cond == "alone":
                    seconds[cond], err = _cli(argv, work / f"cache-{key}-{cond}")
                else:
                    with foreign_load(work, load_size, **load_kw) as load_threads:
                        seconds[cond], err = _cli(argv, work / f"cache-{key}-{cond}")
                threads[cond], changes[cond] = threads_of(out), _changes(err)
                if key == "study":  # the study's own timing of its segmenter training
                    timing = json.loads((out / "results.json").read_text())["info"]["timing_s"]
                    res.values[f"study_train_{cond}_s"] = float(timing["segmentation"])
            ratio = seconds["load"] / seconds["alone"]
            res.rows.append(
                {
                    "stage": what,
                    "alone s": seconds["alone"],
                    "under load s": seconds["load"],
                    "ratio": ratio,
                    "threads alone": threads["alone"],
                    "threads under load": threads["load"],
                    "thread changes alone/load": f"{changes['alone']}/{changes['load']}",
                }
            )
            res.values.update(
                {
                    f"{key}_alone_s": seconds["alone"],
                    f"{key}_load_s": seconds["load"],
                    f"{key}_ratio": ratio,
                    f"{key}_threads_alone": threads["alone"],
                    f"{key}_threads_load": threads["load"],
                    f"{key}_changes_alone": changes["alone"],
                    f"{key}_changes_load": changes["load"],
                }
            )
    res.values["load_threads"] = load_threads
    train = (res.values["study_train_alone_s"], res.values["study_train_load_s"])
    res.notes.append(
        f"inside the study, training the segmenters took {train[0]:.1f} s alone and "
        f"{train[1]:.1f} s under load ({train[1] / max(train[0], 1e-9):.2f}x; the study's own "
        "timing_s.segmentation)"
    )
    res.notes.append(
        f"data: {data_kw['mri_patients']}+{data_kw['ct_patients']} patients, "
        f"{data_kw['slices_per_patient']} slices, {data_kw['size']} px; each stage is one CLI "
        "process (start-up included), no MRICT_THREADS/OMP_NUM_THREADS (auto policy), its own "
        "slice cache; the study reuses the CycleGAN trained alone"
    )
    res.notes.append(
        f"load: a separate process training a float32 conv net ({load_size} px, batch 8) "
        f"with PyTorch's default threads ({load_threads}){', niced (tiny)' if s.tiny else ''}, "
        "started and warmed up before the stage, stopped after it; ratio = under load / "
        "alone (about 2x = a fair share of the cores, 10x or more = a collapse)"
    )
    res.notes.append(
        "threads: train-gan's counts in order of use (2>1: the load follower lowered it); "
        "study: segmenter processes x threads each; thread changes = the follower's "
        f"'mrict: CPU threads a -> b' lines on stderr; load average at start {start_load}"
    )
    return res


def _load_main(ready: Path, stop: Path, size: int, nice: int = 0) -> None:
    """The foreign job: train a small float32 conv net on random data until ``stop``
    exists (``ready`` holds the thread count once warmed up)."""
    if nice:
        os.nice(nice)
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 1, 3, padding=1),
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(8, 1, size, size)
    y = torch.randn(8, 1, size, size)
    step = 0
    while not stop.exists():
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        step += 1
        if step == 3:
            part = ready.with_name(ready.name + ".part")
            part.write_text(str(torch.get_num_threads()))
            part.replace(ready)


if __name__ == "__main__":
    _load_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
