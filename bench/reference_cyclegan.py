"""The plain reference CycleGAN training step: textbook eager fp32 PyTorch.

Same networks as mrict (ResNet generators, PatchGAN discriminators, N(0, 0.02) init), the
least-squares adversarial, cycle L1 and identity L1 losses, an image pool and two Adam
optimisers, written the way a textbook implementation does it: every image computed in its
own forward, discriminators run separately on real images and on detached fakes, no
autocast, no compilation, default optimiser implementation.
Images are (B, 1, H, W) float32 in [-1, 1].
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from mrict.translation.networks import PatchDiscriminator, ResnetGenerator, init_weights


class ReferencePool:
    """Textbook image pool: while filling return the new image; afterwards, with
    probability 1/2 swap it for a stored one."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() > 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k].clone())
                self.images[k] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


class ReferenceCycleGAN:
    """Two generators, two discriminators, Adam(lr, (0.5, 0.999)); :meth:`step` runs one
    optimisation step on an (MR, CT) batch and returns the loss values."""

    def __init__(
        self,
        ngf: int = 64,
        n_blocks: int = 9,
        ndf: int = 64,
        n_layers_d: int = 3,
        lr: float = 2e-4,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.g_mr2ct = init_weights(ResnetGenerator(1, 1, ngf, n_blocks)).to(self.device)
        self.g_ct2mr = init_weights(ResnetGenerator(1, 1, ngf, n_blocks)).to(self.device)
        self.d_mr = init_weights(PatchDiscriminator(1, ndf, n_layers_d)).to(self.device)
        self.d_ct = init_weights(PatchDiscriminator(1, ndf, n_layers_d)).to(self.device)
        self.lambda_cycle = lambda_cycle
        self.lambda_identity = lambda_identity
        self.opt_g = torch.optim.Adam(
            itertools.chain(self.g_mr2ct.parameters(), self.g_ct2mr.parameters()),
            lr=lr,
            betas=(0.5, 0.999),
        )
        self.opt_d = torch.optim.Adam(
            itertools.chain(self.d_mr.parameters(), self.d_ct.parameters()),
            lr=lr,
            betas=(0.5, 0.999),
        )
        self.pool_mr = ReferencePool(pool_size, seed)
        self.pool_ct = ReferencePool(pool_size, seed + 1)

    @staticmethod
    def _gan(scores: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(scores) if real else torch.zeros_like(scores)
        return F.mse_loss(scores, target)

    def _discs_grad(self, flag: bool) -> None:
        for p in itertools.chain(self.d_mr.parameters(), self.d_ct.parameters()):
            p.requires_grad = flag

    def step(self, real_mr: torch.Tensor, real_ct: torch.Tensor) -> dict[str, float]:
        """One step on (B, 1, H, W) batches: generators, then discriminators."""
        real_mr = real_mr.to(self.device)
        real_ct = real_ct.to(self.device)
        # generators
        self._discs_grad(False)
        self.opt_g.zero_grad()
        fake_ct = self.g_mr2ct(real_mr)
        rec_mr = self.g_ct2mr(fake_ct)
        fake_mr = self.g_ct2mr(real_ct)
        rec_ct = self.g_mr2ct(fake_mr)
        loss_adv_ct = self._gan(self.d_ct(fake_ct), True)
        loss_adv_mr = self._gan(self.d_mr(fake_mr), True)
        loss_cyc = self.lambda_cycle * (F.l1_loss(rec_mr, real_mr) + F.l1_loss(rec_ct, real_ct))
        loss_idt = torch.zeros((), device=self.device)
        if self.lambda_identity > 0:
            w = self.lambda_cycle * self.lambda_identity
            idt_ct = self.g_mr2ct(real_ct)
            idt_mr = self.g_ct2mr(real_mr)
            loss_idt = w * (F.l1_loss(idt_ct, real_ct) + F.l1_loss(idt_mr, real_mr))
        loss_g = loss_adv_ct + loss_adv_mr + loss_cyc + loss_idt
        loss_g.backward()
        self.opt_g.step()
        # discriminators
        self._discs_grad(True)
        self.opt_d.zero_grad()
        pooled_ct = self.pool_ct.query(fake_ct.detach())
        pooled_mr = self.pool_mr.query(fake_mr.detach())
        loss_d_ct = 0.5 * (
            self._gan(self.d_ct(real_ct), True) + self._gan(self.d_ct(pooled_ct), False)
        )
        loss_d_ct.backward()
        loss_d_mr = 0.5 * (
            self._gan(self.d_mr(real_mr), True) + self._gan(self.d_mr(pooled_mr), False)
        )
        loss_d_mr.backward()
        self.opt_d.step()
        if self.device.type == "meta":  # FLOP counting: no values to read
            return {}
        return {
            "G_total": float(loss_g.detach()),
            "G_adv": float((loss_adv_ct + loss_adv_mr).detach()),
            "cycle": float(loss_cyc.detach()),
            "identity": float(loss_idt.detach()),
            "D_mr": float(loss_d_mr.detach()),
            "D_ct": float(loss_d_ct.detach()),
        }


def train_reference(
    data_root: str | Path,
    run_dir: str | Path,
    config,
    iterations: int,
) -> Path:
    """Train the reference for ``iterations`` steps on ``data_root``'s train split, with the
    same data order and flips as mrict's trainer (``config`` is a GanConfig), and save the
    generators where :func:`mrict.translation.translate.load_generators` finds them."""
    from mrict.translation.data import epoch_order, load_unpaired
    from mrict.translation.networks import CycleGenerators
    from mrict.translation.trainer import save_generators

    run_dir = Path(run_dir)
    data = load_unpaired(data_root, config.image_size, config.split_seed, progress=False)
    ref = ReferenceCycleGAN(
        config.ngf,
        config.n_blocks,
        config.ndf,
        config.n_layers_d,
        config.lr,
        config.lambda_cycle,
        config.lambda_identity,
        config.pool_size,
        config.device if config.device != "auto" else "cpu",
        config.seed,
    )
    bsz = config.batch_size
    n_mr, n_ct = len(data.mr), len(data.ct)
    per_epoch = max(1, -(-max(n_mr, n_ct) // bsz))
    # the same linear decay as the project (constant, then to 0 over decay_fraction)
    decay = int(round(iterations * config.decay_fraction))
    start = iterations - decay

    def factor(step: int) -> float:
        return 1.0 if step < start or decay == 0 else max(0.0, 1 - (step - start + 1) / (decay + 1))

    sched = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (ref.opt_g, ref.opt_d)]
    orders = None
    for it in range(iterations):
        epoch, pos = divmod(it, per_epoch)
        if pos == 0 or orders is None:
            orders = epoch_order(config.seed, epoch, n_mr, n_ct, per_epoch * bsz)
        sl = slice(pos * bsz, pos * bsz + bsz)
        mr, ct = data.mr[orders[0][sl]], data.ct[orders[1][sl]]
        if config.augment:
            flips = orders[2][sl]
            mr = torch.where(flips[:, 0, None, None, None], mr.flip(-1), mr)
            ct = torch.where(flips[:, 1, None, None, None], ct.flip(-1), ct)
        ref.step(mr, ct)
        for s in sched:
            s.step()
    gens = CycleGenerators(config.ngf, config.n_blocks)
    gens.mr2ct.load_state_dict(ref.g_mr2ct.state_dict())
    gens.ct2mr.load_state_dict(ref.g_ct2mr.state_dict())
    run_dir.mkdir(parents=True, exist_ok=True)
    save_generators(
        gens.cpu(),
        run_dir,
        config,
        {"iterations": iterations, "reference": True, "histograms": data.quantiles()},
    )
    return run_dir
