"""Saving and loading a model's hidden states: ``.pt``, ``.safetensors`` or an in-memory dict.

On disk a state is a flat ``{"net.1.mem": tensor}`` dict. ``.pt`` files are read with
``torch.load(weights_only=True)`` (a pickled object is refused); ``.safetensors`` files carry
metadata: the format name and version, and each layer's type, ``dim`` and ``num_neurons``.
Everything is validated before any state of the model is touched; writes go to a temporary
file renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Union

import torch
from torch import nn

from .tree import flatten, get_states, named_layers

__all__ = ["save_states", "load_states", "LoadResult", "FORMAT", "FORMAT_VERSION"]

FORMAT = "tracetorch-states"
FORMAT_VERSION = "1"
PathLike = Union[str, os.PathLike]


class LoadResult(NamedTuple):
    """What a non-strict load skipped: keys the model has but the source lacks, and the reverse."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _metadata(model: nn.Module) -> dict[str, str]:
    layers = {
        p: {"type": type(layer).__name__, "dim": layer.dim, "num_neurons": layer.num_neurons}
        for p, layer in named_layers(model)
    }
    return {"format": FORMAT, "version": FORMAT_VERSION, "layers": json.dumps(layers)}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_states(model: nn.Module, path: PathLike | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of every hidden state as ``{"net.1.mem": tensor}``; written to ``path`` if given.

    The suffix picks the format: ``.pt`` or ``.safetensors``. Lazy (never run) layers are left out.
    """
    flat = {k: v.detach().clone().contiguous() for k, v in flatten(get_states(model)).items()}
    if path is not None:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = _metadata(model)
            _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))
        elif path.suffix == ".pt":
            _atomic_write(path, lambda tmp: torch.save(flat, tmp))
        else:
            raise ValueError(f"save_states: path must end in .pt or .safetensors, received {str(path)!r}")
    return flat


def _read(src: Union[PathLike, dict]) -> tuple[dict[str, torch.Tensor], dict[str, str] | None, str]:
    if isinstance(src, dict):
        return src, None, "dict"
    path = Path(src)
    where = f"load_states({str(path)!r})"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                flat = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types for malformed files
            raise ValueError(f"{where}: not a readable .safetensors file ({type(err).__name__}: {err})") from None
        if not meta or meta.get("format") != FORMAT:
            raise ValueError(
                f"{where}: not a tracetorch state file (metadata format {(meta or {}).get('format')!r}, expected {FORMAT!r})"
            )
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{where}: state format version {meta.get('version')!r} is not supported (expected {FORMAT_VERSION!r})"
            )
        return flat, meta, where
    if path.suffix == ".pt":
        try:
            flat = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{where}: refused or unreadable .pt file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        return flat, None, where
    raise ValueError(f"{where}: path must end in .pt or .safetensors")


def load_states(model: nn.Module, src: Union[PathLike, dict], strict: bool = True) -> LoadResult:
    """Load hidden states saved by :func:`save_states` (a path or a ``{"net.1.mem": tensor}`` dict).

    Every key, shape and dtype is checked before the model is touched; on any error the
    model's states are exactly as before and the ``ValueError`` lists the missing, unexpected
    and mismatched entries. ``strict=False`` skips missing layers and unexpected keys (reported
    in the returned :class:`LoadResult`) but never a mismatch. Lazy layers are filled in.
    """
    flat, meta, where = _read(src)
    if not isinstance(flat, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in flat.items()
    ):
        raise ValueError(f"{where}: expected a dict of str -> tensor, received {type(flat).__name__}")
    layers = named_layers(model)
    saved_layers = json.loads(meta["layers"]) if meta else {}
    missing, mismatched, updates, used = [], [], [], set()
    for path, layer in layers:
        keys = [f"{path}.{n}" if path else n for n in layer.state_names]
        present = [k for k in keys if k in flat]
        if not present:
            missing.extend(keys)
            continue
        used.update(present)
        if len(present) != len(keys):
            mismatched.append(f"{path or '<model>'}: incomplete, missing {[k for k in keys if k not in flat]}")
            continue
        info = saved_layers.get(path)
        if info and info.get("type") != type(layer).__name__:
            mismatched.append(f"{path}: saved from a {info.get('type')}, the model has a {type(layer).__name__}")
            continue
        ref = layer.state
        expected_dtype = ref[0].dtype if ref is not None else _layer_tensor(layer).dtype
        shape = flat[keys[0]].shape
        for k in keys:
            t = flat[k]
            if (
                t.shape != shape
                or t.dim() == 0
                or not -t.dim() <= layer.dim < t.dim()
                or t.shape[layer.dim] != layer.num_neurons
            ):
                mismatched.append(
                    f"{k}: shape {list(t.shape)}, expected {layer.num_neurons} along dim={layer.dim} and one shape per layer"
                )
            elif t.dtype != expected_dtype:
                mismatched.append(f"{k}: dtype {t.dtype}, expected {expected_dtype}")
        updates.append((layer, keys))
    unexpected = [k for k in flat if k not in used]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"{where}: states not loaded, the model is unchanged.\n  missing: {missing}\n  unexpected: {unexpected}\n"
            f"  mismatched: {mismatched}"
        )
    for layer, keys in updates:
        device = _layer_tensor(layer).device
        layer.state = layer._state_record()(*(flat[k].to(device) for k in keys))
    return LoadResult(missing, unexpected)


def _layer_tensor(layer: nn.Module) -> torch.Tensor:
    """A tensor that tells the layer's dtype and device: its first param or buffer."""
    for t in (*layer.parameters(recurse=False), *layer.buffers(recurse=False)):
        return t
    return torch.empty(0)
