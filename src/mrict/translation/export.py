"""Export the generators to ONNX and check onnxruntime against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path
from mrict.translation.translate import load_generators

#: largest accepted |onnxruntime - torch| on outputs in [-1, 1]
PARITY_TOLERANCE = 1e-4


def export_onnx(
    run_dir: str | Path, out_dir: str | Path | None = None, *, seed: int = 0, batch: int = 2
) -> dict[str, dict]:
    """Write ``mr2ct.onnx`` and ``ct2mr.onnx`` (input ``image`` (B, 1, S, S) in [-1, 1],
    dynamic batch) to ``out_dir`` (default RUN/onnx) and compare onnxruntime with PyTorch on
    random inputs. Returns ``{name: {"path", "max_abs_diff"}}``; MrictError if a difference
    exceeds :data:`PARITY_TOLERANCE`."""
    import onnxruntime as ort

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "onnx"
    gens = load_generators(run_dir, "cpu")
    result: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(seed)
    for name, g in gens.items():
        size = int(g.image_size)
        x = torch.rand(batch, 1, size, size, generator=gen) * 2 - 1
        target = out / f"{name}.onnx"
        with atomic_path(target) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                g,
                (x,),
                str(tmp),
                input_names=["image"],
                output_names=["translated"],
                dynamic_axes={"image": {0: "batch"}, "translated": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        probe = torch.rand(batch + 1, 1, size, size, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = g(probe).numpy()
        got = session.run(None, {"image": probe.numpy()})[0]
        diff = float(np.abs(ref - got).max())
        if not diff <= PARITY_TOLERANCE:
            raise MrictError(f"onnxruntime output differs from PyTorch by {diff:.2e}", target)
        result[name] = {"path": str(target), "max_abs_diff": diff}
    return result
