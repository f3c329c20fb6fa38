"""When the generators' hand-written CPU layers may run.

They are eager-mode CPU optimisations. While tracing, scripting, exporting (ONNX,
TorchScript, torch.export) or compiling (``torch.compile``), every layer is its plain
``torch.nn`` computation: every runtime implements it and the compiler sees ordinary
operators; on other devices the vendor kernels are used as they are.
"""

from __future__ import annotations

import torch


def _is_exporting() -> bool:
    # torch.compiler.is_exporting is new in torch 2.7; before it, torch.export is covered by
    # torch.compiler.is_compiling(), which graph_capture checks as well
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def graph_capture() -> bool:
    """True while tracing, scripting, exporting or compiling."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or _is_exporting()
        or torch.compiler.is_compiling()
    )


def use_fast_path(x: torch.Tensor) -> bool:
    """True for a 4-D CPU tensor in eager mode: the fast layers may take it."""
    return x.device.type == "cpu" and x.dim() == 4 and not graph_capture()
