"""Image pool: the discriminators see a history of generated images, not only the latest."""

from __future__ import annotations

import torch


class ImagePool:
    """Holds up to ``size`` generated images (1, H, W). :meth:`query` returns, per image,
    either the new one (stored while the pool fills, or with probability 1/2 afterwards)
    or a stored one it replaces. Its random draws come from its own seeded generator, and
    its whole state (images + generator) round-trips through :meth:`state_dict`."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) new fakes -> (B, 1, H, W) images for the discriminator (detached)."""
        batch = batch.detach()
        if self.size <= 0:
            return batch
        out = []
        for image in batch:
            stored = image.to("cpu", torch.float32).clone()
            if len(self.images) < self.size:
                self.images.append(stored)
                out.append(image)
            elif torch.rand(1, generator=self.gen).item() < 0.5:
                k = int(torch.randint(len(self.images), (1,), generator=self.gen).item())
                old = self.images[k]
                self.images[k] = stored
                out.append(old.to(image.device, image.dtype))
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {
            "images": torch.stack(self.images) if self.images else torch.zeros(0),
            "gen": self.gen.get_state(),
            "size": self.size,
        }

    def load_state_dict(self, state: dict) -> None:
        images = state["images"]
        self.images = [im.clone() for im in images] if images.numel() else []
        self.gen.set_state(state["gen"])
        self.size = int(state["size"])
