"""One rank of the DDP scaling benchmark, launched by ``torch.distributed.run``:
trains the CycleGAN for a few iterations and (rank 0) writes the step times as JSON.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=N -m bench.ddp_worker
DATA OUT JSON SIZE NGF BLOCKS BATCH ITERATIONS THREADS``
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    data, out, result, size, ngf, blocks, batch, iters, threads = argv
    torch.set_num_threads(int(threads))
    from mrict.translation.config import GanConfig
    from mrict.translation.trainer import train_cyclegan

    cfg = dataclasses.replace(
        GanConfig(),
        image_size=int(size),
        ngf=int(ngf),
        n_blocks=int(blocks),
        ndf=int(ngf),
        batch_size=int(batch),
        iterations=int(iters),
        epochs=0,
        log_every=10**9,
        checkpoint_every=0,
        sample_count=1,
        device="cpu",
    )
    stamps: list[float] = []
    train_cyclegan(
        data, out, cfg, progress=False, on_step=lambda i: stamps.append(time.perf_counter())
    )
    if int(os.environ.get("RANK", "0")) == 0:
        steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        Path(result).write_text(
            json.dumps(
                {"world": world, "batch": int(batch), "threads": int(threads), "step_s": steps}
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
