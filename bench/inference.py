"""Inference: slices/s of the paper generator (ngf 64, 9 blocks) at 256x256, through
mrict's translate path end to end from DICOM files and model-only, against a plain fp32
eager reference (the same network, ``torch.no_grad``, same batch size)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import Result, Settings, interleaved, median, time_call


def _make_run(run_dir: Path, ngf: int, n_blocks: int, size: int, seed: int) -> None:
    """A run folder holding freshly initialised generators (speed does not depend on the
    weights), in the format ``load_generators`` reads."""
    from mrict.translation.config import GanConfig
    from mrict.translation.networks import build_models
    from mrict.translation.trainer import save_generators

    torch.manual_seed(seed)
    gens, _ = build_models(ngf, n_blocks, 8, 1)
    cfg = GanConfig(image_size=size, ngf=ngf, n_blocks=n_blocks)
    run_dir.mkdir(parents=True)
    save_generators(gens, run_dir, cfg, {"histograms": {}})


def run(s: Settings) -> Result:
    from mrict.translation.translate import load_generators, translate_array, translate_path

    res = Result("inference", "Inference: paper generator, slices/s")
    if s.tiny:
        size, ngf, blocks, n_files, rounds = 32, 4, 1, 4, 2
    elif s.quick:
        size, ngf, blocks, n_files, rounds = 128, 64, 9, 8, 2
    else:
        size, ngf, blocks, n_files, rounds = 256, 64, 9, 16, 3
    batch = 8
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        tmp_p = Path(tmp)
        run_dir = tmp_p / "run"
        _make_run(run_dir, ngf, blocks, size, s.seed)
        from mrict.data.io import write_dicom

        src = tmp_p / "mr"
        src.mkdir()
        rng = np.random.default_rng(s.seed)
        for i in range(n_files):
            write_dicom(
                src / f"P001_{i:03d}.dcm",
                rng.uniform(0, 1000, (size, size)).astype(np.float32),
                modality="MR",
                patient_id="P001",
                slice_index=i,
            )
        gen = load_generators(run_dir, s.device)["mr2ct"]
        images = rng.uniform(-1, 1, (n_files, size, size)).astype(np.float32)
        from mrict.translation.networks import ResnetGenerator

        plain = ResnetGenerator(1, 1, ngf, blocks)
        plain.load_state_dict(gen.state_dict())
        plain = plain.to(s.device).float().eval()

        def reference() -> None:
            with torch.no_grad():
                for i in range(0, n_files, batch):
                    x = torch.from_numpy(images[i : i + batch])[:, None].to(s.device)
                    plain(x).cpu()

        def end_to_end(prec: str, r: int) -> None:
            """Read the files, normalise, translate, write DICOM (mrict's translate path)."""
            translate_path(
                run_dir,
                src,
                tmp_p / f"out_{prec}{r}",
                "mr2ct",
                batch_size=batch,
                device=s.device,
                precision=prec,
                progress=False,
            )

        # end to end, each round interleaved with a reference round (the machine's speed
        # drifts; a ratio is only fair between neighbouring measurements)
        e2e: dict[str, list[float]] = {"fp32": [], "auto": [], "reference": []}
        for r in range(rounds + 1):  # round 0 warms up
            for key in e2e:
                fn = reference if key == "reference" else lambda k=key, r=r: end_to_end(k, r)
                t = time_call(fn, s.device)
                if r > 0:
                    e2e[key].append(t)
        # model only: mrict's translate_array vs the plain reference on the same network
        times = interleaved(
            {
                "mrict": lambda: translate_array(gen, images, batch),
                "mrict_auto": lambda: translate_array(gen, images, batch, "auto"),
                "reference": reference,
            },
            steps=rounds,
            warmup=1,
            device=s.device,
        )
    t_e2e, t_e2e_a = median(e2e["fp32"]), median(e2e["auto"])
    t_r_e2e = median(e2e["reference"])
    t_m, t_r = median(times["mrict"]), median(times["reference"])
    t_a = median(times["mrict_auto"])
    res.rows = [
        {
            "path": "reference model-only (fp32 eager)",
            "slices": n_files,
            "slices/s": n_files / t_r,
            "speed-up": 1.0,
        },
        {
            "path": "mrict model-only (translate_array)",
            "slices": n_files,
            "slices/s": n_files / t_m,
            "speed-up": t_r / t_m,
        },
        {
            "path": "mrict model-only, precision auto (bf16 where fast)",
            "slices": n_files,
            "slices/s": n_files / t_a,
            "speed-up": t_r / t_a,
        },
        {
            "path": "mrict end to end (translate_path, DICOM in/out), fp32",
            "slices": n_files,
            "slices/s": n_files / t_e2e,
            "speed-up": t_r_e2e / t_e2e,
        },
        {
            "path": "mrict end to end, --precision auto",
            "slices": n_files,
            "slices/s": n_files / t_e2e_a,
            "speed-up": t_r_e2e / t_e2e_a,
        },
    ]
    res.values = {
        "reference_s": t_r,
        "reference_e2e_rounds_s": t_r_e2e,
        "mrict_model_s": t_m,
        "mrict_e2e_s": t_e2e,
        "mrict_e2e_auto_s": t_e2e_a,
        "size": size,
        "ngf": ngf,
        "n_blocks": blocks,
        "batch": batch,
    }
    res.notes.append(
        f"{size}x{size}, ngf {ngf}, {blocks} blocks, batch {batch}; medians of {rounds} rounds "
        "(after one warm-up round); model-only rows interleaved with the reference, end-to-end "
        "rows interleaved with their own reference rounds, each speed-up against the reference "
        "rounds it was interleaved with. translate_path works file by file, so these one-slice "
        "DICOM files run at batch 1 (the model-only rows at batch 8)."
    )
    return res
