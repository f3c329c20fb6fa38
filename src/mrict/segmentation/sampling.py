"""Drawing training slices: several sets stacked into one, the batch make-up under the
"mixed" schedule, seeded epoch-wise index streams and on-the-fly augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.segmentation.config import SegConfig


def concat_slice_sets(sets: Sequence[SliceSet]) -> SliceSet:
    """Stack several SliceSets (same image size) into one; the first one's modality is kept."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise MrictError("no training slices")
    if len(sets) == 1:
        return sets[0]
    sizes = {s.images.shape[1:] for s in sets}
    if len(sizes) != 1:
        raise MrictError(f"training sets differ in image size: {sorted(sizes)}")
    return SliceSet(
        sets[0].modality,
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.masks for s in sets]),
        np.concatenate([s.has_mask for s in sets]),
        [p for s in sets for p in s.patient_ids],
        [x for s in sets for x in s.slices] if all(s.slices for s in sets) else [],
        [x for s in sets for x in s.norm] if all(s.norm for s in sets) else [],
    )


def batch_composition(config: SegConfig, has_extra: bool) -> tuple[int, int]:
    """Slices per batch ``(from the target set, from the extra sets)`` under the "mixed"
    schedule: ``batch_size`` target slices (as without extra data) plus
    ``max(1, round(batch_size * (1 - real_fraction) / real_fraction))`` extra ones."""
    if not has_extra:
        return config.batch_size, 0
    rf = config.real_fraction
    return config.batch_size, max(1, round(config.batch_size * (1.0 - rf) / rf))


class IndexStream:
    """Endless epoch-wise shuffled draws of ``0 .. n-1`` (each index once per epoch, a new
    order every epoch), from its own ``torch.Generator`` seeded with ``seed``.

    ``take(k)`` returns ``k`` ``(index, epoch)`` pairs; ``draws`` counts them. The state
    (:meth:`state` / :meth:`load`) makes it exactly resumable.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise MrictError("no training slices")
        self.n = int(n)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.epoch = 0
        self.order = torch.randperm(self.n, generator=self.gen)
        self.pos = 0
        self.draws = 0

    def take(self, k: int) -> list[tuple[int, int]]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch += 1
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            out.append((int(self.order[self.pos]), self.epoch))
            self.pos += 1
        self.draws += k
        return out

    @property
    def passes(self) -> float:
        """Draws divided by the set size (passes over the set so far)."""
        return self.draws / self.n

    def state(self) -> dict[str, Any]:
        return {
            "generator": self.gen.get_state(),
            "order": self.order,
            "epoch": self.epoch,
            "pos": self.pos,
            "draws": self.draws,
        }

    def load(self, state: dict[str, Any]) -> None:
        order = state["order"]
        if len(order) != self.n:
            raise MrictError("checkpoint data order does not fit the training set")
        self.gen.set_state(state["generator"])
        self.order = order
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.draws = int(state.get("draws", 0))


class SliceItems:
    """(N, C, H, W) inputs and (N, H, W) masks; item ``i`` of epoch ``e`` is augmented with
    a draw that depends only on (seed, stream, epoch, i), so runs are reproducible."""

    def __init__(
        self, inputs: np.ndarray, masks: np.ndarray, augment: bool, seed: int, stream: int
    ) -> None:
        self.inputs, self.masks = inputs, masks
        self.seed, self.stream = seed, stream
        self._transform = None
        if augment:
            from mrict.data.augment import build_augment

            self._transform = build_augment()

    def get(self, i: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.inputs[i])
        mask = torch.from_numpy(self.masks[i].astype(np.float32))[None]
        if self._transform is not None:
            from mrict.data.augment import apply_augment

            key = (self.seed, epoch, i) if self.stream == 0 else (self.seed, self.stream, epoch, i)
            image, mask = apply_augment(self._transform, image, mask, key)
        return image, mask
