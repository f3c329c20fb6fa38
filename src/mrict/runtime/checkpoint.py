"""Safe checkpoints: ``NAME.safetensors`` (every tensor) plus ``NAME.json`` (everything else).

No pickle is ever written or read. Arbitrary nested state (model, optimiser and scheduler
state dicts, RNG states) is flattened: tensors and NumPy arrays go to the safetensors file
under path-like keys, the remaining structure goes to JSON with ``{"__tensor__": key}``
placeholders. The JSON is written last and records the SHA-256 of the weights file, so a
checkpoint counts as complete only when both files exist and agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file
from safetensors.torch import save as _serialize

from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text

FORMAT = "mrict-checkpoint/1"
_SAFETENSORS_ERROR = getattr(safetensors, "SafetensorError", ValueError)


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = prefix or "_"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[str(k)] = _flatten(v, f"{prefix}/{k}" if prefix else str(k), tensors)
        # remember which keys were ints (optimizer state uses int param ids)
        int_keys = [str(k) for k in obj if isinstance(k, int)]
        if int_keys:
            out["__int_keys__"] = int_keys
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (at {prefix!r})")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        int_keys = set(obj.get("__int_keys__", []))
        return {
            (int(k) if k in int_keys else k): _unflatten(v, tensors)
            for k, v in obj.items()
            if k != "__int_keys__"
        }
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_file(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Write ``tensors`` in safetensors format to exactly ``path`` (no side files: the
    library's own writer stages through a temporary file of its own naming, which a kill
    would leave behind)."""
    with open(path, "wb") as fh:
        fh.write(_serialize(tensors))
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(
    stem: str | Path, state: dict[str, Any], meta: dict[str, Any] | None = None
) -> Path:
    """Write ``stem.safetensors`` and ``stem.json`` atomically; return the JSON path.

    ``state`` is any nesting of dicts/lists/tuples of tensors, arrays and JSON scalars
    (e.g. ``{"G_mr2ct": model.state_dict(), "optim": opt.state_dict()}``). ``meta`` is
    plain JSON (config, epoch, iteration...).
    """
    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    weights = stem.with_name(stem.name + ".safetensors")
    staged = stem.with_name(stem.name + ".next.safetensors")
    sidecar = stem.with_name(stem.name + ".json")
    # Crash-safe replacement of an existing checkpoint (the JSON is the commit point):
    # 1. new weights -> NAME.next.safetensors; 2. JSON -> points at them (commit);
    # 3. rename them to NAME.safetensors; 4. JSON -> points at NAME.safetensors.
    # A kill between any two steps leaves a JSON whose weights exist and match (the loader
    # also accepts NAME.safetensors when the staged file was already renamed).
    with atomic_path(staged) as tmp:
        save_file(tensors, str(tmp))
    doc = {
        "format": FORMAT,
        "weights": staged.name,
        "sha256": _sha256(staged),
        "meta": meta or {},
        "state": tree,
    }
    try:
        atomic_write_text(sidecar, json.dumps(doc, indent=1))
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    try:
        staged.replace(weights)
    except OSError as exc:
        raise MrictError(f"cannot write checkpoint ({exc.strerror})", weights) from exc
    doc["weights"] = weights.name
    atomic_write_text(sidecar, json.dumps(doc, indent=1))
    return sidecar


def load_checkpoint(stem: str | Path, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; return ``(state, meta)``.

    ``stem`` may be given with or without the ``.json``/``.safetensors`` suffix. Refuses
    pickles, missing or mismatching files with :class:`MrictError`.
    """
    stem = Path(stem)
    if stem.suffix in {".pt", ".pth", ".ckpt", ".pkl", ".bin"}:
        raise MrictError(
            "refusing to load a pickle-based checkpoint; mrict reads only safetensors + JSON",
            stem,
        )
    if stem.suffix in {".json", ".safetensors"}:
        stem = stem.with_suffix("")
    sidecar = stem.with_name(stem.name + ".json")
    if not sidecar.is_file():
        raise MrictError("checkpoint not found (no JSON sidecar)", sidecar)
    try:
        doc = json.loads(sidecar.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MrictError(f"checkpoint sidecar is not valid JSON ({exc})", sidecar) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MrictError(f"not an mrict checkpoint (expected format {FORMAT})", sidecar)
    name = str(doc.get("weights", ""))
    if not name or Path(name).name != name or name in (".", ".."):
        raise MrictError(f"checkpoint names an invalid weights file {name!r} (missing)", sidecar)
    weights = sidecar.with_name(name)
    canonical = stem.with_name(stem.name + ".safetensors")
    if not weights.is_file() and canonical.is_file() and _sha256(canonical) == doc.get("sha256"):
        weights = canonical  # interrupted between renaming the staged weights and the JSON
    if weights.parent != sidecar.parent or not weights.is_file():
        raise MrictError("checkpoint weights file is missing", weights)
    if verify and _sha256(weights) != doc.get("sha256"):
        raise MrictError(
            "checkpoint weights do not match their sidecar (corrupt or replaced)", weights
        )
    try:
        tensors = load_file(str(weights))
    except (_SAFETENSORS_ERROR, OSError, ValueError) as exc:
        raise MrictError(f"cannot read checkpoint weights ({exc})", weights) from exc
    try:
        state = _unflatten(doc["state"], tensors)
    except KeyError as exc:
        raise MrictError(f"checkpoint is inconsistent: missing tensor {exc}", weights) from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise MrictError(f"checkpoint sidecar structure is invalid ({exc})", sidecar) from exc
    if not isinstance(state, dict):
        raise MrictError(
            "checkpoint sidecar structure is invalid (state is not a mapping)", sidecar
        )
    return state, doc.get("meta", {})


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load ``state`` into ``module`` after checking every key and shape; clear error otherwise."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MrictError(
            f"checkpoint does not fit model {name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise MrictError(
                f"checkpoint does not fit model {name}: {key} has shape "
                f"{tuple(state[key].shape)}, model expects {tuple(tensor.shape)}"
            )
    module.load_state_dict(state)


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


def load_weights(
    path: str | Path, *, allow_pickle: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights from an mrict checkpoint, or (explicit opt-in) a legacy PyTorch file.

    ``path`` is a checkpoint stem/``.json``/``.safetensors`` (read with
    :func:`load_checkpoint`), or a ``.pt``/``.pth``/``.ckpt`` file, which is refused unless
    ``allow_pickle`` is true; even then it is read with ``torch.load(weights_only=True)``,
    whose restricted unpickler refuses every callable that is not a tensor type, so a
    malicious pickle is reported, never executed. Returns ``(state, meta)``.
    """
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return load_checkpoint(path)
    if not allow_pickle:
        raise MrictError(
            "refusing to load a pickle-based model file (it could run code); convert it to "
            "safetensors, or pass the explicit legacy-weights option to read it with "
            "torch.load(weights_only=True)",
            path,
        )
    if not path.is_file():
        raise MrictError("model file not found", path)
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "unsafe content"
        raise MrictError(f"refusing unsafe content in legacy model file ({first})", path) from exc
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise MrictError(f"cannot read legacy model file ({type(exc).__name__})", path) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise MrictError(f"legacy model file holds a {type(obj).__name__}, not a state dict", path)
    return obj, {}


def check_config(
    saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...], source: str | Path
) -> None:
    """Refuse a checkpoint whose architecture settings ``keys`` differ from ``current``.

    Run before building/loading so the message names the setting, not a tensor shape.
    """
    diffs = [
        f"{k}={saved[k]!r} (now {current.get(k)!r})"
        for k in keys
        if k in saved and saved[k] != current.get(k)
    ]
    if diffs:
        raise MrictError(
            "checkpoint was made with different model settings: " + ", ".join(diffs), source
        )
