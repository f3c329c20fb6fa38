"""What a CycleGAN run logs on rank 0: every loss term to ``losses.csv`` and TensorBoard,
sample grids as PNG and TensorBoard images, and the line shown next to the progress bar."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.translation.networks import CycleGenerators

LOSS_NAMES = (
    "G_total",
    "G_adv_mr2ct",
    "G_adv_ct2mr",
    "cycle_mr",
    "cycle_ct",
    "identity_mr",
    "identity_ct",
    "ssim_mr",
    "ssim_ct",
    "feature_mr2ct",
    "feature_ct2mr",
    "seg_mr2ct",
    "seg_ct2mr",
    "lesion_mr2ct",
    "lesion_ct2mr",
    "D_mr",
    "D_ct",
    "S_mr",
    "S_ct",
)


class TrainLog:
    """``RUN/losses.csv`` (rewritten atomically; a resumed run keeps the rows up to its
    checkpoint) and ``RUN/tensorboard/``; does nothing unless ``enabled`` (rank 0)."""

    def __init__(self, run_dir: Path, resume_iteration: int, enabled: bool) -> None:
        self.enabled = enabled
        self.csv_path = run_dir / "losses.csv"
        self.header = ["iteration", "epoch", *LOSS_NAMES, "lr", "images_per_s"]
        self.rows: list[list[str]] = []
        self.writer = None
        if not enabled:
            return
        if self.csv_path.is_file():
            with self.csv_path.open(newline="") as fh:
                old = list(csv.reader(fh))
            self.rows = [r for r in old[1:] if r and int(r[0]) <= resume_iteration]
        # tensorboard is a declared dependency (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_iteration + 1)

    @staticmethod
    def summary(losses: dict[str, float], ips: float) -> str:
        """The progress bar's info text."""
        return (
            f"G {losses['G_total']:.3f} D {losses['D_mr'] + losses['D_ct']:.3f} "
            f"cyc {losses['cycle_mr'] + losses['cycle_ct']:.3f} "
            f"seg {losses['seg_mr2ct'] + losses['seg_ct2mr']:.3f} {ips:.1f} img/s"
        )

    def step(
        self, iteration: int, epoch: int, losses: dict[str, float], lr: float, ips: float
    ) -> None:
        """Append one row (every ``log_every`` steps) to the CSV and TensorBoard."""
        if not self.enabled:
            return
        row = [
            str(iteration),
            str(epoch),
            *(f"{losses[k]:.6g}" for k in LOSS_NAMES),
            f"{lr:.6g}",
            f"{ips:.3f}",
        ]
        self.rows.append(row)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.header)
        w.writerows(self.rows)
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.writer is not None:
            for k in LOSS_NAMES:
                self.writer.add_scalar(f"loss/{k}", losses[k], iteration)
            self.writer.add_scalar("lr", lr, iteration)
            self.writer.add_scalar("images_per_s", ips, iteration)

    def samples(self, path: Path, grid: np.ndarray, iteration: int) -> None:
        """A sample grid as PNG and as a TensorBoard image."""
        if not self.enabled:
            return
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        if self.writer is not None:
            self.writer.add_image("samples", grid[None], iteration, dataformats="CHW")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def sample_grid(gens: CycleGenerators, mr: torch.Tensor, ct: torch.Tensor) -> np.ndarray:
    """uint8 (rows * H, 6 * W) grid: per row MRI, MRI->CT, cycle, CT, CT->MRI, cycle."""
    fake_ct = gens.mr2ct(mr)
    rec_mr = gens.ct2mr(fake_ct)
    fake_mr = gens.ct2mr(ct)
    rec_ct = gens.mr2ct(fake_mr)
    cols = [mr, fake_ct, rec_mr, ct, fake_mr, rec_ct]
    tiles = torch.cat(
        [torch.cat([c[i, 0].float() for c in cols], dim=1) for i in range(len(mr))], dim=0
    )
    return ((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
